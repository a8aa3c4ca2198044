"""``stethoedge exam``: several recordings (chest sites) of one patient -> one verdict with evidence and a report."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from stethoedge.cli_common import MAX_THREADS, AddCommand, bounded_float, bounded_int


def _recordings(args: argparse.Namespace) -> list:
    """The exam's recordings: a folder, files, and/or --site NAME=FILE labels."""
    import os

    from stethoedge.runtime.errors import AudioError
    from stethoedge.runtime.exam import recordings_from_dir, recordings_from_files, recordings_from_site_labels

    recs = []
    files = []
    for p in args.inputs:
        if os.path.isdir(p):
            found = recordings_from_dir(p)
            if not found:
                raise AudioError(f"{p}: no audio files to examine")
            recs += found
        else:
            files.append(p)
    recs += recordings_from_files(files) + recordings_from_site_labels(args.site or [])
    if not recs:
        raise AudioError("nothing to examine: give recordings, a patient folder, or --site NAME=FILE")
    return recs


def _print(verdict: Any) -> None:
    who = f"patient {verdict.patient}: " if verdict.patient else ""
    print(f"# exam {who}{verdict.label.upper()} — {verdict.summary}")
    for s in verdict.sites:
        ev = ", ".join(f"{k} {v['windows']} window(s) (mean p {v['mean_probability']:.2f})"
                       for k, v in s.evidence.items() if v["windows"])
        ab = ", ".join(f"{k} {v}" for k, v in sorted(s.abstained_by_reason.items()))
        print(f"{s.site:<10} {s.finding:<13} {s.n_usable}/{s.n_windows} usable"
              + (f"; abstained: {ab}" if ab else "") + (f"; evidence: {ev}" if ev else ""))
        for e in s.errors:
            print(f"{s.site:<10} error: {e}", file=sys.stderr)


def cmd_exam(args: argparse.Namespace) -> int:
    """Run the exam; exit 0 with a verdict, 1 when some recordings failed (reported, verdict from the rest),
    2 on an error (no recording could be classified, bad inputs, unwritable outputs)."""
    from stethoedge.runtime.engine import Classifier
    from stethoedge.runtime.errors import AudioError, OutputError
    from stethoedge.runtime.exam import Exam, ExamRules, run_exam
    from stethoedge.runtime.outputs import atomic_write_bytes, atomic_write_text, check_output, files_under

    if args.bundle is None:
        from stethoedge.models import default_bundle

        args.bundle = str(default_bundle())
    exam = Exam.of(_recordings(args), allow_mixed=args.allow_mixed, patient=args.patient)
    named = [x for x in (args.json, args.html, args.png) if x and x != "-"]
    if len(set(named)) < len(named):
        raise OutputError("--json, --html and --png must name different files")
    if (args.html and args.html == "-") or (args.png and args.png == "-"):
        raise OutputError("--html and --png write files, not standard output")
    inputs = [r.path for r in exam.recordings] + files_under(args.bundle)
    for out in (args.json, args.html, args.png):
        check_output(out, inputs)
    if args.html or args.png:
        from stethoedge.runtime.exam_report import require_matplotlib

        require_matplotlib()  # before any work: a missing extra is a one-line error
    rules = ExamRules(evidence_prob=args.evidence_prob, min_evidence_windows=args.min_evidence_windows,
                      min_evidence_fraction=args.min_evidence_fraction,
                      min_usable_windows=args.min_usable_windows)
    clf = Classifier.open(args.bundle, artifact=args.artifact, backend=args.backend, threads=args.threads)
    verdict = run_exam(clf, exam, rules, hop_s=args.hop, min_s=args.min_seconds)
    if args.json != "-":
        _print(verdict)
    if args.json:
        text = json.dumps(verdict.to_json(), indent=1) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            atomic_write_text(args.json, text)
    if args.html:
        from stethoedge.runtime.exam_report import exam_html

        atomic_write_text(args.html, exam_html(verdict))
    if args.png:
        from stethoedge.runtime.exam_report import exam_png

        atomic_write_bytes(args.png, exam_png(verdict))
    failed = verdict.failed_recordings
    if failed == len(exam.recordings):
        raise AudioError(f"none of the {failed} recording(s) could be classified")
    if failed:
        print(f"# {failed} of {len(exam.recordings)} recording(s) failed (reported in the exam)", file=sys.stderr)
    return 1 if failed else 0


def register(add: AddCommand) -> None:
    """Add ``exam`` to the parser."""
    from stethoedge.cli_runtime import BACKEND_CHOICES, HOP_RANGE, MIN_SECONDS_RANGE
    from stethoedge.runtime.exam import ExamRules

    d = ExamRules()
    p = add("exam", cmd_exam,
            "Examine one patient: recordings of several chest sites -> per-site findings and one verdict (normal, "
            "adventitious: crackle/wheeze/both, inconclusive, poor quality) with its evidence; optional HTML/PNG "
            "report. Exit 0: verdict; 1: some recordings failed (reported); 2: error.")
    p.add_argument("inputs", nargs="*", metavar="AUDIO|DIR",
                   help="recordings (site and patient from ICBHI names like 101_1b1_Al_sc_Meditron or SPRSound "
                        "names like 40512331_8.1_1_p1_3544, else the site is the file name), or a patient folder "
                        "(every audio file directly in it) (default: none; then --site is needed)")
    p.add_argument("--site", action="append", metavar="NAME=FILE", default=None,
                   help="a recording with its site named, e.g. --site 'left base=rec1.wav'; repeatable (default: none)")
    p.add_argument("--bundle", default=None, help="bundle directory (default: the shipped model)")
    p.add_argument("--patient", default=None, metavar="ID",
                   help="examine only this patient's recordings (default: all; they must be of one patient)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="accept recordings of several patients as one session (default: refuse them)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write the verdict, sites, windows and rules as JSON to FILE ('-': stdout) (default: none)")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="write a self-contained HTML report (spectrograms, decision/quality timelines, verdict); "
                        "needs the report extra (matplotlib) (default: none)")
    p.add_argument("--png", default=None, metavar="FILE",
                   help="write the report's figure as one PNG; needs the report extra (default: none)")
    p.add_argument("--evidence-prob", type=bounded_float(0.01, 1.0), default=d.evidence_prob, metavar="P",
                   help=f"a usable window is evidence of crackle (wheeze) when P(crackle)+P(both) "
                        f"(P(wheeze)+P(both)) reaches P (default {d.evidence_prob:g}, 0.01-1)")
    p.add_argument("--min-evidence-windows", type=bounded_int(1, 1000), default=d.min_evidence_windows, metavar="K",
                   help=f"a site has a sound when at least K windows are evidence of it "
                        f"(default {d.min_evidence_windows}, 1-1000)")
    p.add_argument("--min-evidence-fraction", type=bounded_float(0.0, 1.0), default=d.min_evidence_fraction,
                   metavar="F", help=f"a site has a sound only when at least this share of its usable windows are "
                                     f"evidence of it, too (default {d.min_evidence_fraction:g}, 0-1)")
    p.add_argument("--min-usable-windows", type=bounded_int(1, 1000), default=d.min_usable_windows, metavar="N",
                   help=f"a site with fewer usable (not abstained) windows gives no answer "
                        f"(default {d.min_usable_windows}, 1-1000)")
    p.add_argument("--hop", type=bounded_float(*HOP_RANGE), default=2.0, metavar="SECONDS",
                   help="seconds between decisions (default 2, 0.1-60)")
    p.add_argument("--min-seconds", type=bounded_float(*MIN_SECONDS_RANGE), default=2.0, metavar="SECONDS",
                   help="first decision after this much audio (default 2, 0.25-60)")
    p.add_argument("--artifact", default=None, help="artifact of the bundle to run (default: the bundle's default)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="inference backend (default auto)")
    p.add_argument("--threads", type=bounded_int(1, MAX_THREADS), default=None,
                   help=f"inference threads (default: the backend's own choice, 1-{MAX_THREADS})")
