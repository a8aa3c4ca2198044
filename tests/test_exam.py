"""The examination (runtime/exam.py, `stethoedge exam`): site parsing, inputs, the aggregation rules on
constructed windows, a real exam of one SPRSound patient through the CLI (JSON + HTML + PNG), bad inputs."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stethoedge.runtime.engine import WindowResult
from stethoedge.runtime.errors import AudioError
from stethoedge.runtime.exam import (Exam, ExamRules, Recording, aggregate, parse_site, quality_hint,
                                     recordings_from_dir, recordings_from_files, recordings_from_site_labels,
                                     site_finding, window_view)

REPO = Path(__file__).resolve().parents[1]
SPR_INTER = REPO.parent / "shared" / "data" / "sprsound" / "test2022_inter"
PATIENT = "40512331"  # test2022_inter: 7 recordings at p1, p2, p4
LABELS = ("normal", "crackle", "wheeze", "both")


def need_sprsound() -> list[Path]:
    files = sorted(SPR_INTER.glob(f"{PATIENT}_*.flac")) if SPR_INTER.is_dir() else []
    if len(files) < 3:
        pytest.skip(f"real SPRSound recordings of patient {PATIENT} not present under {SPR_INTER}")
    return files


def win(t: float, probs: tuple[float, float, float, float], **kw) -> WindowResult:
    """A constructed window ending at t s with these probabilities (normal, crackle, wheeze, both)."""
    p = dict(zip(LABELS, probs))
    top = max(p, key=p.get)
    fields = dict(start_s=max(0.0, t - 8), end_s=t, padded=False, after_gap=False, label=top, confidence=p[top],
                  probabilities=p, latency_ms=1.0)
    extra = {k: v for k, v in kw.items() if k not in fields}
    fields.update({k: v for k, v in kw.items() if k in fields})
    r = WindowResult(**fields)
    for k, v in extra.items():  # quality fields, whether or not this WindowResult has them yet
        setattr(r, k, v)
    return r


NORMAL = (0.9, 0.05, 0.03, 0.02)
CRACKLE = (0.2, 0.7, 0.05, 0.05)
WHEEZE = (0.2, 0.05, 0.7, 0.05)


# ----------------------------------------------------------------------------------------------- names

@pytest.mark.parametrize("name, patient, site", [
    ("101_1b1_Al_sc_Meditron", "101", "Al"),
    ("/data/226_1b1_Pl_sc_LittC2SE.wav", "226", "Pl"),
    ("130_2p3_Tc_mc_AKGC417L.WAV", "130", "Tc"),
    ("40512331_8.1_1_p1_3544", "40512331", "p1"),  # the dot of the age is no suffix
    ("x/40512331_8.1_1_p4_3543.flac", "40512331", "p4"),
    ("_65014433_10.4_0_p3_123.wav", "_65014433", "p3"),
    ("rec1.wav", None, None),
    ("101_1b1_Xx_sc_Meditron.wav", None, None),  # not an ICBHI location
    ("40512331_8.1_1_p5_3544.flac", None, None),  # SPRSound has p1..p4
])
def test_site_and_patient_from_file_names(name: str, patient: str | None, site: str | None) -> None:
    assert parse_site(name) == (patient, site)


def test_recordings_from_files_and_site_labels() -> None:
    recs = recordings_from_files(["a/101_1b1_Al_sc_Meditron.wav", "b/left.wav"])
    assert recs == [Recording("a/101_1b1_Al_sc_Meditron.wav", "Al", "101"), Recording("b/left.wav", "left", None)]
    labelled = recordings_from_site_labels(["left base=r1.wav", "RUL=x/40512331_8.1_1_p1_3544.flac"])
    assert [(r.site, r.path, r.patient) for r in labelled] == [("left base", "r1.wav", None),
                                                                ("RUL", "x/40512331_8.1_1_p1_3544.flac", "40512331")]
    for bad in ("nofile", "=x.wav", "name="):
        with pytest.raises(AudioError, match="NAME=FILE"):
            recordings_from_site_labels([bad])


def test_patient_folder_groups_by_patient(tmp_path: Path) -> None:
    for n in ("101_1b1_Al_sc_Meditron.wav", "101_1b1_Pr_sc_Meditron.wav", "102_1b1_Ar_sc_Meditron.wav",
              "plain.wav", ".hidden.wav", "notes.txt"):
        (tmp_path / n).write_bytes(b"")
    recs = recordings_from_dir(tmp_path)
    assert sorted((r.patient, r.site) for r in recs) == [("101", "Al"), ("101", "Pr"), ("102", "Ar"),
                                                        (tmp_path.name, "plain")]
    with pytest.raises(AudioError, match=r"3 patients: .*101 \(2\)"):
        Exam.of(recs)
    assert Exam.of(recs, patient="101").patient == "101"
    assert len(Exam.of(recs, patient="101").recordings) == 2
    assert Exam.of(recs, allow_mixed=True).patient == "mixed"
    with pytest.raises(AudioError, match="no recording of patient 999"):
        Exam.of(recs, patient="999")
    with pytest.raises(AudioError, match="no recordings"):
        Exam.of([])


# ----------------------------------------------------------------------------------------------- rules

def test_site_rule_counts_evidence_windows() -> None:
    rules = ExamRules(evidence_prob=0.5, min_evidence_windows=2, min_evidence_fraction=0.0)
    assert site_finding("p1", [win(2, NORMAL), win(4, CRACKLE), win(6, NORMAL)], rules).finding == "normal"
    two = site_finding("p1", [win(2, CRACKLE), win(4, NORMAL), win(6, CRACKLE)], rules)
    assert two.finding == "crackle"
    assert two.evidence["crackle"]["windows"] == 2 and two.evidence["crackle"]["times"] == [[0.0, 2.0], [0.0, 6.0]]
    assert two.evidence["crackle"]["mean_probability"] == pytest.approx(0.75)  # P(crackle) + P(both)
    both = site_finding("p1", [win(2, CRACKLE), win(4, CRACKLE), win(6, WHEEZE), win(8, WHEEZE)], rules)
    assert both.finding == "both"
    # "both" probability counts for crackle and for wheeze
    assert site_finding("p1", [win(2, (0.3, 0.0, 0.0, 0.7))] * 2, rules).finding == "both"
    # the fraction: 2 of 6 usable windows are not half of them
    half = ExamRules(evidence_prob=0.5, min_evidence_windows=2, min_evidence_fraction=0.5)
    assert site_finding("p1", [win(2, CRACKLE)] * 2 + [win(4, NORMAL)] * 4, half).finding == "normal"
    assert site_finding("p1", [win(2, CRACKLE)] * 3 + [win(4, NORMAL)] * 3, half).finding == "crackle"
    # the threshold: 0.7 is not evidence at 0.75
    assert site_finding("p1", [win(2, CRACKLE)] * 5, ExamRules(evidence_prob=0.8)).finding == "normal"


def test_abstained_windows_are_reported_never_evidence() -> None:
    rules = ExamRules(evidence_prob=0.5, min_evidence_windows=1, min_evidence_fraction=0.0, min_usable_windows=2)
    windows = [win(2, CRACKLE, label="poor_quality", quality="friction", abstained=True, abstain_reason="poor_quality"),
               win(4, CRACKLE, label="uncertain", abstained=True, abstain_reason="low_confidence"),
               win(6, NORMAL, quality="ok"), win(8, NORMAL, quality="ok")]
    site = site_finding("p2", windows, rules)
    assert site.finding == "normal"  # the crackle-looking windows abstained
    assert (site.n_windows, site.n_usable, site.n_abstained) == (4, 2, 2)
    assert site.abstained_by_reason == {"poor_quality": 1, "uncertain": 1}
    assert site.quality_counts == {"friction": 1, "unchecked": 1, "ok": 2}
    assert site.evidence["crackle"]["windows"] == 0
    # too few usable windows: poor quality when most abstained for the signal, else inconclusive
    poor = site_finding("p3", windows[:1] * 3 + windows[2:3], rules)
    assert poor.finding == "poor_quality"
    unsure = site_finding("p4", windows[1:2] * 3 + windows[2:3], rules)
    assert unsure.finding == "inconclusive"


def test_engine_silence_flag_abstains_without_a_quality_gate() -> None:
    w = win(8, CRACKLE, warnings=["silent window (peak -inf dBFS): the label means nothing"])
    v = window_view(w)
    assert v["abstained"] and v["quality"] == "silence" and v["abstain_reason"] == "poor_quality"
    assert quality_hint(w).startswith("silence")
    assert quality_hint(win(8, NORMAL)) is None
    assert quality_hint(win(8, NORMAL, quality="ok")) is None
    assert quality_hint(win(8, NORMAL, quality="no_contact", label="poor_quality")).startswith("no contact — press")
    assert quality_hint(win(8, NORMAL, quality="friction", label="poor_quality")) == \
        "friction — hold the chest piece still"
    assert "speech" in quality_hint(win(8, NORMAL, quality="speech", label="poor_quality"))


def test_patient_verdicts() -> None:
    rules = ExamRules(evidence_prob=0.5, min_evidence_windows=1, min_evidence_fraction=0.0)
    normal = site_finding("p1", [win(2, NORMAL)] * 3, rules)
    crackle = site_finding("p2", [win(2, CRACKLE)] * 3, rules)
    wheeze = site_finding("p3", [win(2, WHEEZE)] * 3, rules)
    poor = site_finding("p4", [win(2, NORMAL, label="poor_quality", quality="no_contact", abstained=True)] * 3, rules)
    unsure = site_finding("p5", [win(2, NORMAL, label="uncertain", abstained=True)] * 3, rules)
    v = aggregate([normal, crackle, poor], rules, "7")
    assert (v.verdict, v.sounds, v.label) == ("adventitious", ["crackle"], "crackle")
    assert "p2 (crackle)" in v.summary and v.n_abstained == 3 and v.n_usable == 6
    assert aggregate([crackle, wheeze], rules).label == "both"
    assert aggregate([normal, poor], rules).verdict == "normal"
    assert aggregate([poor, poor], rules).verdict == "poor_quality"
    assert aggregate([unsure, poor, unsure], rules).verdict == "inconclusive"
    assert json.loads(json.dumps(v.to_json()))["sites"][1]["finding"] == "crackle"


def test_rules_refuse_nonsense() -> None:
    for bad in (dict(evidence_prob=0.0), dict(evidence_prob=1.5), dict(min_evidence_windows=0),
                dict(min_evidence_fraction=1.2), dict(min_usable_windows=0)):
        with pytest.raises(ValueError):
            ExamRules(**bad)


# ----------------------------------------------------------------------------------------------- real exam

def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stethoedge", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def test_real_exam_of_one_sprsound_patient_json_html_png(tmp_path: Path) -> None:
    files = need_sprsound()
    pick = [f for f in files if "_p1_" in f.name][:1] + [f for f in files if "_p2_" in f.name][:1] + \
        [f for f in files if "_p4_" in f.name][:1]
    out = tmp_path / "exam.json"
    proc = run_cli("exam", *map(str, pick), "--json", str(out), "--html", str(tmp_path / "exam.html"),
                   "--png", str(tmp_path / "exam.png"))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(out.read_text())
    assert data["patient"] == PATIENT
    assert [s["site"] for s in data["sites"]] == ["p1", "p2", "p4"]
    assert data["verdict"] in ("normal", "adventitious", "inconclusive", "poor_quality")
    assert data["n_windows"] == sum(s["n_windows"] for s in data["sites"]) > 6
    for s in data["sites"]:
        assert s["windows"] and all(w["recording"] in s["recordings"] for w in s["windows"])
    assert data["rules"] == {"evidence_prob": ExamRules().evidence_prob,
                             "min_evidence_windows": ExamRules().min_evidence_windows,
                             "min_evidence_fraction": ExamRules().min_evidence_fraction,
                             "min_usable_windows": ExamRules().min_usable_windows}
    assert f"# exam patient {PATIENT}: {data['label'].upper()}" in proc.stdout
    html = (tmp_path / "exam.html").read_text()
    assert data["summary"].split(" — ")[0] in html.replace("&#x27;", "'")
    assert html.count('<section class="site"') == 3 and "data:image/png;base64," in html
    png = (tmp_path / "exam.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_patient_folder_and_a_failing_file_are_reported(tmp_path: Path) -> None:
    files = need_sprsound()
    folder = tmp_path / PATIENT
    folder.mkdir()
    shutil.copy(files[0], folder / files[0].name)
    (folder / f"{PATIENT}_8.1_1_p3_9999.wav").write_bytes(b"RIFF junk, not audio")  # a site that fails
    out = tmp_path / "e.json"
    proc = run_cli("exam", str(folder), "--json", str(out))
    assert proc.returncode == 1, proc.stderr  # some recordings failed: reported, verdict from the rest
    assert "Traceback" not in proc.stderr
    data = json.loads(out.read_text())
    assert data["failed_recordings"] == 1
    bad = [s for s in data["sites"] if s["site"] == "p3"][0]
    assert bad["finding"] == "error" and len(bad["errors"]) == 1 and "\n" not in bad["errors"][0]
    assert data["verdict"] != "poor_quality" or data["n_usable"] == 0
    assert "p3         error: " in proc.stderr


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    files = need_sprsound()
    other = tmp_path / "101_1b1_Al_sc_Meditron.flac"
    shutil.copy(files[0], other)
    proc = run_cli("exam", str(files[0]), str(other))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "2 patients" in proc.stderr and "--allow-mixed" in proc.stderr
    proc = run_cli("exam", str(tmp_path / "missing.wav"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # the only recording fails: an error
    proc = run_cli("exam")
    assert proc.returncode == 2 and "nothing to examine" in proc.stderr
    # outputs: never an input, never the same file twice, never a missing directory
    proc = run_cli("exam", str(files[0]), "--json", str(files[0]))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert files[0].stat().st_size > 1000
    proc = run_cli("exam", str(files[0]), "--json", str(tmp_path / "a"), "--html", str(tmp_path / "a"))
    assert proc.returncode == 2 and "different files" in proc.stderr
    proc = run_cli("exam", str(files[0]), "--html", str(tmp_path / "nodir" / "r.html"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_cli("exam", str(files[0]), "--evidence-prob", "2")
    assert proc.returncode == 2 and "0.01 to 1" in proc.stderr


def test_html_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    files = need_sprsound()
    block = ("import sys, builtins; real = builtins.__import__\n"
             "def imp(name, *a, **k):\n"
             "    if name.split('.')[0] == 'matplotlib': raise ImportError('no matplotlib')\n"
             "    return real(name, *a, **k)\n"
             "builtins.__import__ = imp\n"
             "from stethoedge.cli import main; sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", block, "exam", str(files[0]), "--html", str(tmp_path / "r.html")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'stethoedge[report]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_listen_shows_quality_before_the_label_on_a_silent_stretch(tmp_path: Path) -> None:
    """A real recording with 12 s of digital silence spliced in: the silent windows get the live hint first."""
    import soundfile as sf

    files = need_sprsound()
    audio, rate = sf.read(files[3])
    wav = tmp_path / "silent_stretch.wav"
    sf.write(wav, np.concatenate([audio, np.zeros(12 * rate), audio]), rate)
    proc = run_cli("listen", "--replay", str(wav), "--fast")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    windows = [i for i, line in enumerate(lines) if re.match(r"\s+\d+\.\d+-\d+\.\d+", line)]
    silent = [i for i in windows if "silent window" in lines[i]]
    assert len(silent) >= 2, proc.stdout  # 12 s of silence: at least two whole 8 s windows in it
    for i in silent:  # the hint comes first, right before the window's own line
        assert lines[i - 1].startswith("! silence — "), proc.stdout
    hinted = [i + 1 for i, line in enumerate(lines) if line.startswith("! ")]
    gated = [i for i in windows if "(abstained: quality" in lines[i]]
    for i in hinted:  # every hint is followed by its window, which the gate (or the silence flag) rejected
        assert i in windows and ("poor_quality" in lines[i] or "silent window" in lines[i]), lines[i]
        m = re.search(r"abstained: quality (\w+)", lines[i])
        if m:  # the hint is the one for the gate's reason
            from stethoedge.runtime.exam import QUALITY_HINTS

            assert lines[i - 1].startswith("! " + QUALITY_HINTS[m.group(1)].split(" — ")[0]), (lines[i - 1], lines[i])
    assert set(gated) <= set(hinted)  # and no rejected window goes without its hint
    assert any(i not in hinted for i in windows)  # the stretches with good sound give none


def test_default_rules_are_the_ones_the_evaluation_chose_and_measured() -> None:
    """The defaults must be the constants models/reports/exam-evaluation.json reports (chosen on validation
    patients by train/exam_eval.py): a change of one without rerunning the other fails here."""
    from dataclasses import asdict

    chosen = json.loads((REPO / "models" / "reports" / "exam-evaluation.json").read_text())["rules"]
    assert asdict(ExamRules()) == chosen
    assert chosen != asdict(ExamRules(evidence_prob=0.5))


def test_evaluation_scoring_on_constructed_records() -> None:
    """train/exam_eval.py: a poor-quality or inconclusive call is a miss; a patient is adventitious if any of its
    recordings is; the trivial baseline is always normal."""
    from stethoedge.train.exam_eval import CODES, binary_metrics, patient_calls

    t = np.array([CODES[x] for x in ("normal", "normal", "adventitious", "adventitious", "poor_quality")])
    p = np.array([CODES[x] for x in ("normal", "inconclusive", "adventitious", "normal", "poor_quality")])
    m = binary_metrics(t, p)
    assert (m["se"], m["sp"], m["accuracy"], m["accuracy_3class"], m["coverage"]) == (0.5, 0.5, 0.5, 0.6, 0.75)
    crackly = [{"probabilities": dict(zip(LABELS, CRACKLE)), "label": "crackle", "start_s": 0, "end_s": t}
               for t in range(2, 12, 2)]
    calm = [{"probabilities": dict(zip(LABELS, NORMAL)), "label": "normal", "start_s": 0, "end_s": t}
            for t in range(2, 12, 2)]
    recs = [{"stem": "a1", "patient": "A", "site": "p1", "truth": "normal", "windows": calm},
            {"stem": "a2", "patient": "A", "site": "p2", "truth": "adventitious", "windows": crackly},
            {"stem": "b1", "patient": "B", "site": "p1", "truth": "poor_quality", "windows": calm},
            {"stem": "b2", "patient": "B", "site": "p1", "truth": "normal", "windows": calm}]
    patients, truths, calls = patient_calls(recs, ExamRules())
    assert patients == ["A", "B"] and truths == ["adventitious", "normal"] and calls == ["adventitious", "normal"]


def test_exam_and_its_report_run_with_torch_and_training_blocked(tmp_path: Path) -> None:
    files = need_sprsound()
    block = ("import sys; sys.modules['torch'] = None; sys.modules['stethoedge.train'] = None; "
             "sys.modules['stethoedge.export'] = None\n"
             "from stethoedge.cli import main\n"
             f"rc = main(['exam', {str(files[1])!r}, '--json', {str(tmp_path / 'e.json')!r}, "
             f"'--html', {str(tmp_path / 'e.html')!r}])\n"
             "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
             "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "e.json").read_text())["sites"][0]["site"] == "p1"
    assert (tmp_path / "e.html").stat().st_size > 10_000
