"""Choose and evaluate the examination rules (runtime/exam.py) on real recordings.

Two steps, both torch-free:

* ``cache``: run the shipped model (the runtime's own stream engine, default hop and smoothing)
  over every recording of SPRSound train2022 / test2022_inter / test2022_intra and the ICBHI
  recordings, one JSON file of window records per recording under ``--cache`` (outside the repo).
* ``evaluate``: choose the rule constants on the SPRSound **validation patients** (the 20 % of
  train2022 patients held out of the model's training by ``train/sources.py``, seed 0; their
  recordings never trained a weight), then score the rules, with those constants frozen, per
  recording and per patient on test2022_inter, test2022_intra and the ICBHI recordings of patients
  held out of training, with 95 % patient-bootstrap intervals next to the trivial answer
  (always normal). Writes ``models/reports/exam-evaluation.md`` (and ``.json``).

Usage::

    python -m stethoedge.train.exam_eval cache --cache /work/cache/exam
    python -m stethoedge.train.exam_eval evaluate --cache /work/cache/exam --out models/reports/exam-evaluation
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SPR_ROOT = "/work/shared/data/sprsound"
ICBHI_ROOTS = ("/work/shared/data/icbhi_train16k/audio_and_txt_files", "/work/shared/data/icbhi_sample/audio_and_txt_files")
SPR_FOLDERS = ("train2022", "test2022_inter", "test2022_intra")


def _audio_files(folder: Path) -> list[Path]:
    """Audio recordings directly in ``folder`` (sorted)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".wav", ".flac") and not p.name.startswith("."))


def spr_patient(stem: str) -> str:
    """SPRSound patient id of a file name (the training parser's rule: train/sprsound.py parse_stem)."""
    from stethoedge.data.sprsound import parse_stem

    return parse_stem(stem)[0]


def validation_patients(seed: int = 0, fraction: float = 0.2) -> set[str]:
    """The train2022 patients held out of the shipped model's training (train/sources.py, its seed and fraction)."""
    from stethoedge.train.sources import hold_out_patients
    from stethoedge.data.sprsound import list_records

    records = list_records(SPR_ROOT, ("train2022",))
    return hold_out_patients([r.patient for r in records], fraction, seed)


def manifest_sha256(bundle_dir: Any) -> str | None:
    """SHA-256 of a bundle's manifest.json (which model, calibration and quality gate made a cache entry)."""
    import hashlib

    if bundle_dir is None:
        return None
    p = Path(bundle_dir) / "manifest.json"
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def cache_recording(clf: Any, audio: Path, out: Path) -> None:
    """Classify one recording with the runtime stream engine; write its window records (or its error) to ``out``."""
    from stethoedge.runtime.errors import StethoedgeError
    from stethoedge.runtime.outputs import atomic_write_text
    from stethoedge.runtime.sources import FileSource

    try:
        source = FileSource(audio)
        try:
            windows = [r.to_json() for r in clf.classify(source)]
        finally:
            source.close()
        record: dict[str, Any] = {"file": str(audio), "windows": windows, "warnings": list(source.warnings)}
    except StethoedgeError as exc:
        record = {"file": str(audio), "error": str(exc), "windows": []}
    record["manifest_sha256"] = manifest_sha256(getattr(clf.bundle, "root", None))
    atomic_write_text(out, json.dumps(record))


def cache_main(argv: list[str] | None = None) -> int:
    """``cache`` step: window records of every recording, skipping those already cached."""
    from stethoedge.models import default_bundle
    from stethoedge.runtime.engine import Classifier

    ap = argparse.ArgumentParser(prog="exam_eval cache")
    ap.add_argument("--cache", required=True, help="cache directory (outside the repository)")
    ap.add_argument("--bundle", default=None, help="bundle (default: the shipped model)")
    ap.add_argument("--only", default=None, help="only this folder name (e.g. test2022_inter)")
    args = ap.parse_args(argv)
    clf = Classifier.open(args.bundle or default_bundle(), threads=1)
    jobs: list[tuple[Path, Path]] = []
    roots = [Path(SPR_ROOT) / f for f in SPR_FOLDERS] + [Path(r) for r in ICBHI_ROOTS]
    for root in roots:
        name = root.name if root.parent.name == "sprsound" else root.parent.name
        if args.only and name != args.only:
            continue
        out_dir = Path(args.cache) / name
        out_dir.mkdir(parents=True, exist_ok=True)
        files = _audio_files(root)
        if name == "train2022":  # only the validation patients choose constants; the rest trained the model
            val = validation_patients()
            files = [a for a in files if spr_patient(a.stem) in val]
        jobs += [(a, out_dir / f"{a.stem}.json") for a in files]
    todo = [(a, o) for a, o in jobs if not o.exists()]
    print(f"{len(todo)} of {len(jobs)} recordings to classify", flush=True)
    t0 = time.time()
    for i, (audio, out) in enumerate(todo, 1):
        cache_recording(clf, audio, out)
        if i % 200 == 0:
            print(f"{i}/{len(todo)} {time.time() - t0:.0f} s", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------- evaluate

SPR_TRUTH = {"Normal": "normal", "CAS": "adventitious", "DAS": "adventitious", "CAS & DAS": "adventitious",
             "Poor Quality": "poor_quality"}
#: Integer codes of truths and predictions for the bootstrap.
CODES = {"normal": 0, "adventitious": 1, "poor_quality": 2, "inconclusive": 3, "error": 4}
FINDING_TO_CALL = {"normal": "normal", "crackle": "adventitious", "wheeze": "adventitious", "both": "adventitious",
                   "poor_quality": "poor_quality", "inconclusive": "inconclusive", "error": "error"}


def _load_cached(cache: Path, folder: str) -> list[dict[str, Any]]:
    """The cached window records of one folder, with stem, patient and site from the file name."""
    from stethoedge.runtime.exam import parse_site

    out = []
    d = cache / folder
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        rec = json.loads(f.read_text())
        patient, site = parse_site(f.stem)
        rec.update(stem=f.stem, patient=patient, site=site)
        out.append(rec)
    return out


def spr_truths(records: list[dict[str, Any]], folder: str) -> None:
    """Attach each SPRSound recording's record label (its JSON annotation) as ``truth``."""
    from stethoedge.data.sprsound import parse_annotation

    for r in records:
        label, _ = parse_annotation(Path(SPR_ROOT) / folder / f"{r['stem']}.json")
        r["truth"] = SPR_TRUTH[label]


def icbhi_records(cache: Path) -> list[dict[str, Any]]:
    """ICBHI recordings of patients held out of the shipped model's training and selection, with truth
    adventitious when any annotated cycle has a crackle or a wheeze (deduplicated by name)."""
    from stethoedge.data.icbhi import parse_annotation

    splits = json.loads((Path(__file__).resolve().parents[1] / "models/reports/respiratory-mn04.splits.json").read_text())
    seen_patients = {s.split("_")[0] for s in splits["train"] + splits["val"]}
    out: dict[str, dict[str, Any]] = {}
    for folder, root in (("icbhi_train16k", ICBHI_ROOTS[0]), ("icbhi_sample", ICBHI_ROOTS[1])):
        for r in _load_cached(cache, folder):
            if r["patient"] in seen_patients or r["stem"] in out:
                continue
            cycles = parse_annotation(Path(root) / f"{r['stem']}.txt")
            r["truth"] = "adventitious" if any(c.crackles or c.wheezes for c in cycles) else "normal"
            out[r["stem"]] = r
    return list(out.values())


def recording_calls(records: list[dict[str, Any]], rules: Any) -> list[str]:
    """The exam's call for each recording examined alone (one site): normal / adventitious / poor_quality /
    inconclusive / error."""
    from stethoedge.runtime.exam import site_finding

    return [FINDING_TO_CALL[site_finding(r["site"] or r["stem"], r["windows"], rules, [r["stem"]],
                                         [r["error"]] if r.get("error") else []).finding] for r in records]


def patient_calls(records: list[dict[str, Any]], rules: Any) -> tuple[list[str], list[str], list[str]]:
    """(patients, truths, verdicts): each patient's recordings of one folder examined as one exam, the
    recordings of one chest site pooled into that site. Truth: adventitious if any recording is, else
    normal if any is normal, else poor_quality."""
    from stethoedge.runtime.exam import aggregate, site_finding

    by_patient: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_patient.setdefault(r["patient"], []).append(r)
    patients, truths, calls = [], [], []
    for p, recs in sorted(by_patient.items()):
        sites: dict[str, list[dict[str, Any]]] = {}
        for r in recs:
            sites.setdefault(r["site"], []).append(r)
        results = []
        for site, rs in sites.items():
            windows = [w for r in rs for w in r["windows"]]
            owner = [r["stem"] for r in rs for _ in r["windows"]]
            errors = [r["error"] for r in rs if r.get("error")]
            results.append(site_finding(site, windows, rules, [r["stem"] for r in rs], errors, owner))
        verdict = aggregate(results, rules, p).verdict
        t = {r["truth"] for r in recs}
        truth = "adventitious" if "adventitious" in t else "normal" if "normal" in t else "poor_quality"
        patients.append(p)
        truths.append(truth)
        calls.append(verdict)
    return patients, truths, calls


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Se, Sp over units whose truth is normal (0) or adventitious (1), any other call counting as a miss;
    accuracy over those; 3-class accuracy over all units (poor quality truths must be called poor quality);
    coverage = share of normal/adventitious units that got a normal or adventitious call."""
    nan = float("nan")
    b = y_true <= 1
    pos, neg = y_true == 1, y_true == 0
    se = float(np.mean(y_pred[pos] == 1)) if pos.any() else nan
    sp = float(np.mean(y_pred[neg] == 0)) if neg.any() else nan
    out = {"se": se, "sp": sp, "accuracy": float(np.mean(y_pred[b] == y_true[b])) if b.any() else nan,
           "accuracy_3class": float(np.mean(y_pred == y_true)) if y_true.size else nan,
           "coverage": float(np.mean(y_pred[b] <= 1)) if b.any() else nan}
    out["score"] = ((se + sp) / 2 + (2 * se * sp / (se + sp) if se + sp > 0 else 0.0)) / 2 if np.isfinite(se + sp) else nan
    return out


def scored(truths: list[str], calls: list[str], patients: list[str], n_boot: int = 1000) -> dict[str, Any]:
    """Point metrics with 95 % patient-bootstrap intervals, for the exam and for the trivial "always normal"."""
    from stethoedge.data.evaluation import patient_bootstrap

    y = np.array([CODES[t] for t in truths])
    out: dict[str, Any] = {"n": int(y.size), "n_patients": len(set(patients)),
                           "truths": {k: int(np.sum(y == v)) for k, v in CODES.items() if np.any(y == v)},
                           "calls": {k: int(sum(c == k for c in calls)) for k in CODES if k in calls}}
    for name, pred in (("exam", np.array([CODES[c] for c in calls])), ("always_normal", np.zeros_like(y))):
        out[name] = {"metrics": binary_metrics(y, pred),
                     "ci95": patient_bootstrap(y, pred, np.array(patients), metric=binary_metrics, n_boot=n_boot)}
    return out


def choose_rules(val: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """Grid search on the validation patients: the mean of the SPRSound challenge scores (mean of the average
    and the harmonic mean of Se and Sp, normal vs adventitious) per recording and per patient; ties -> the
    larger K, then the larger fraction, then the larger threshold (the more conservative rule).
    ``min_usable_windows`` stays 2 (not searched)."""
    from stethoedge.runtime.exam import ExamRules

    rec = [r for r in val if r["truth"] != "poor_quality"]
    truths = np.array([CODES[r["truth"]] for r in rec])
    grid = []
    for k in range(1, 7):
        for f in (0.0, 0.25, 0.5, 0.75):
            for t in np.round(np.arange(0.30, 0.951, 0.05), 2):
                rules = ExamRules(evidence_prob=float(t), min_evidence_windows=k, min_evidence_fraction=f)
                m = binary_metrics(truths, np.array([CODES[c] for c in recording_calls(rec, rules)]))
                _, pt, pc = patient_calls(val, rules)
                mp = binary_metrics(np.array([CODES[x] for x in pt]), np.array([CODES[x] for x in pc]))
                grid.append({"evidence_prob": float(t), "min_evidence_windows": k, "min_evidence_fraction": f,
                             "recording_score": m["score"], "recording_se": m["se"], "recording_sp": m["sp"],
                             "patient_score": mp["score"], "patient_se": mp["se"], "patient_sp": mp["sp"],
                             "objective": (m["score"] + mp["score"]) / 2})
    best = max(grid, key=lambda g: (round(g["objective"], 6), g["min_evidence_windows"], g["min_evidence_fraction"],
                                    g["evidence_prob"]))
    return ExamRules(evidence_prob=best["evidence_prob"], min_evidence_windows=best["min_evidence_windows"],
                     min_evidence_fraction=best["min_evidence_fraction"]), grid


def _fmt(block: dict[str, Any], key: str) -> str:
    v = block["metrics"][key]
    lo, hi = block["ci95"].get(key, (float("nan"), float("nan")))
    return "n/a" if not np.isfinite(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def evaluate_main(argv: list[str] | None = None) -> int:
    """``evaluate`` step: choose the constants on validation patients, score them on the test sets, write the report."""
    from dataclasses import asdict

    from stethoedge.runtime.exam import window_view
    from stethoedge.runtime.outputs import atomic_write_text

    ap = argparse.ArgumentParser(prog="exam_eval evaluate")
    ap.add_argument("--cache", required=True, help="cache directory of the `cache` step")
    ap.add_argument("--out", default="models/reports/exam-evaluation", help="report path without suffix")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    sets: dict[str, list[dict[str, Any]]] = {}
    for folder in SPR_FOLDERS:
        recs = _load_cached(cache, folder)
        spr_truths(recs, folder)
        sets[folder] = recs
    sets["icbhi_heldout"] = icbhi_records(cache)
    rules, grid = choose_rules(sets["train2022"])
    results: dict[str, Any] = {"rules": asdict(rules), "chosen_on": "SPRSound train2022 validation patients "
                               "(held out of the model's training: train/sources.py hold_out_patients, 20 %, seed 0)",
                               "grid": grid, "sets": {}}
    for name, recs in sets.items():
        if not recs:
            continue
        calls = recording_calls(recs, rules)
        per_rec = scored([r["truth"] for r in recs], calls, [r["patient"] for r in recs], args.boot)
        patients, truths, verdicts = patient_calls(recs, rules)
        per_pat = scored(truths, verdicts, patients, args.boot)
        windows = [window_view(w) for r in recs for w in r["windows"]]
        quality: dict[str, int] = {}
        for v in windows:
            key = v["abstain_reason"] or "usable"
            quality[key] = quality.get(key, 0) + 1
        results["sets"][name] = {"recordings": per_rec, "patients": per_pat, "windows": quality}
    results["manifest_sha256"] = sorted({str(r.get("manifest_sha256")) for recs in sets.values() for r in recs})
    manifest = json.loads((Path(__file__).resolve().parents[1] / "models/respiratory-mn04/manifest.json").read_text())
    results["bundle"] = {"calibrated": "confidence" in manifest, "quality_gate": "quality" in manifest,
                         "manifest_sha256_now": manifest_sha256(Path(__file__).resolve().parents[1]
                                                                / "models/respiratory-mn04")}
    atomic_write_text(f"{args.out}.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(f"{args.out}.md", render(results))
    print(render(results))
    return 0


SET_TITLES = {"train2022": "SPRSound train2022 validation patients (chose the constants; optimistic)",
              "test2022_inter": "SPRSound test2022_inter (patients never seen: the honest SPRSound number)",
              "test2022_intra": "SPRSound test2022_intra (patients also in train2022: optimistic)",
              "icbhi_heldout": "ICBHI recordings of patients held out of training and selection"}


def render(results: dict[str, Any]) -> str:
    """The Markdown report."""
    r = results["rules"]
    lines = ["# Examination rules: choice and evaluation", "",
             "Made by `python -m stethoedge.train.exam_eval` (train/exam_eval.py) from the shipped model "
             "`respiratory-mn04` run by the runtime's stream engine (hop 2 s, first decision at 2 s, windows of 8 s). "
             "The rules are in runtime/exam.py.", "",
             f"**Constants** (chosen on {results['chosen_on']}, by the mean of the SPRSound challenge "
             f"scores (normal vs adventitious) per recording and per patient, over a grid P 0.30..0.95 step 0.05, "
             f"K 1..6, F 0, 0.25, 0.5, 0.75): evidence_prob P = **{r['evidence_prob']:g}**, min_evidence_windows "
             f"K = **{r['min_evidence_windows']}**, min_evidence_fraction F = **{r['min_evidence_fraction']:g}**, "
             f"min_usable_windows = {r['min_usable_windows']} (fixed).", "",
             "Per recording: the recording examined alone (one site). Per patient: all of a patient's recordings "
             "in that folder examined as one exam (recordings of one chest site pooled). Truth per recording: "
             "SPRSound record label (Normal; CAS, DAS, CAS & DAS = adventitious; Poor Quality), ICBHI: adventitious "
             "when any annotated cycle has a crackle or a wheeze. Per patient: adventitious if any recording is, "
             "else normal if any is normal, else poor quality. Se and Sp count every other call (inconclusive, "
             "poor quality) as a miss and leave poor-quality truths out; accuracy (3-class) includes them, and "
             "a poor-quality truth is right only when the exam says poor quality. 95 % intervals: 1,000 "
             "bootstrap resamples of patients. Trivial baseline: always normal.", ""]
    for name, block in results["sets"].items():
        lines += [f"## {SET_TITLES.get(name, name)}", ""]
        w = block.get("windows", {})
        lines += [f"Windows: {sum(w.values())}, usable {w.get('usable', 0)}, abstained poor quality "
                  f"{w.get('poor_quality', 0)}, abstained uncertain {w.get('uncertain', 0)}.", ""]
        for unit in ("recordings", "patients"):
            b = block[unit]
            lines += [f"**Per {unit[:-1]}** ({b['n']} {unit}, {b['n_patients']} patients; truths "
                      f"{', '.join(f'{k} {v}' for k, v in b['truths'].items())}; exam calls "
                      f"{', '.join(f'{k} {v}' for k, v in b['calls'].items())})", "",
                      "| | Se | Sp | accuracy (normal/adv.) | accuracy (3-class) | score |", "|---|---|---|---|---|---|"]
            for who in ("exam", "always_normal"):
                lines.append(f"| {who.replace('_', ' ')} | {_fmt(b[who], 'se')} | {_fmt(b[who], 'sp')} | "
                             f"{_fmt(b[who], 'accuracy')} | {_fmt(b[who], 'accuracy_3class')} | {_fmt(b[who], 'score')} |")
            lines.append("")
    b = results.get("bundle", {})
    shas = results.get("manifest_sha256", [])
    if b.get("calibrated") and b.get("quality_gate") and shas == [b.get("manifest_sha256_now")]:
        lines += [f"Made with the shipped bundle's signal-quality gate and temperature calibration (every cached "
                  f"window from manifest sha256 {shas[0][:12]}...): abstained windows (poor quality, uncertain) are "
                  "never evidence; the probabilities are calibrated.", ""]
    else:
        lines += [f"WARNING: the cached windows come from manifest(s) {', '.join(s[:12] for s in shas)}, the shipped "
                  f"bundle is now {str(b.get('manifest_sha256_now'))[:12]} (calibrated: {b.get('calibrated')}, "
                  f"quality gate: {b.get('quality_gate')}): rerun the cache step into a new directory.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``cache`` or ``evaluate``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("cache", "evaluate"):
        print("usage: python -m stethoedge.train.exam_eval {cache,evaluate} --cache DIR [...]", file=sys.stderr)
        return 2
    return cache_main(argv[1:]) if argv[0] == "cache" else evaluate_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
