"""Fit and report the signal-quality gate (runtime/quality.py) on real SPRSound labels + realistic artefacts.

Data (all from ``--sprsound``, the 2022 release):

* real labels: windows of ``Poor Quality`` records -> class ``unknown`` (cause not annotated),
  windows of every other record -> ``ok``;
* artefacts added to real good windows: ``friction`` (simulator friction bursts), ``knock``
  (damped low-frequency impacts + a click), ``no_contact`` (the chest piece lifted: the signal
  low-passed below 100 Hz, 15-35 dB quieter, plus a faint electronic floor), ``heart_dominant``
  (simulator S1/S2 at 60-140 bpm, 12-30 dB above the breath), ``speech`` (espeak-ng sentences,
  body-conducted: low-passed at 0.8-3 kHz, 0 to +15 dB over the breath). ``clipping`` and
  ``silence`` are exact rules in the runtime and are only tested, not learned.

Splits (by patient): train2022 minus a 20 % patient-held-out validation -> fitting; the
validation patients -> the P(ok) threshold (rule: the largest threshold that rejects at most 5 %
of the real good validation windows); test2022_inter / test2022_intra ->
report only (real labels; the synthetic-artefact detection rates use test2022_inter bases and
sentences never used in fitting).

    python -m stethoedge.train.quality --sprsound ../shared/data/sprsound --out models/reports \
        --gate models/reports/quality.npz
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal

from stethoedge.runtime.audio_io import load_audio
from stethoedge.runtime.outputs import atomic_write_text
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.runtime.quality import FEATURE_NAMES, QualityGate, quality_features
from stethoedge.train.simulator import friction_burst, heart_sound

RATE = 16000
WIN = 8 * RATE
ARTEFACTS = ("friction", "knock", "no_contact", "heart_dominant", "speech")
CLASSES = ("ok", "unknown") + ARTEFACTS
SENTENCES_FIT = [
    "The patient breathed in deeply while the doctor listened", "Please take a deep breath and hold it",
    "How long have you had this cough", "Mummy can I have a biscuit now", "Breathe out slowly through your mouth",
    "Does it hurt when I press here", "We will come back tomorrow morning", "Stay still for a moment please",
    "Turn around and lift your shirt", "He has had a fever since Tuesday", "Count to ten with me one two three",
    "Good boy you are doing very well",
]
SENTENCES_TEST = [
    "The weather was cold and the bus was late", "Open your mouth and say ah", "Is she allergic to anything",
    "Let me listen to your back now", "Where is the little teddy bear", "The nurse will give you a sticker",
]
VOICES = ["en-us", "en", "en+f3", "en+m3", "en-us+f2", "zh", "en+f4"]


def rms(x: np.ndarray) -> float:
    """Root mean square."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def speech_bank(sentences: list[str], seed: int) -> list[np.ndarray]:
    """espeak-ng renderings of ``sentences`` (a few voices and speeds), resampled to 16 kHz."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(sentences):
            for j in range(2):
                path = Path(tmp) / f"{i}_{j}.wav"
                voice = VOICES[int(rng.integers(len(VOICES)))]
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(rng.integers(120, 200))), "-p",
                                str(int(rng.integers(20, 80))), "-w", str(path), text], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                a, r = sf.read(path, dtype="float32")
                out.append(scipy.signal.resample_poly(a, RATE, r).astype(np.float32))
    return out


def add_artefact(base: np.ndarray, kind: str, rng: np.random.Generator, speech: list[np.ndarray]) -> np.ndarray:
    """A realistic artefact of ``kind`` added to (or replacing) a real 8 s window."""
    n = base.shape[0]
    b = rms(base)
    x = base.astype(np.float64).copy()
    if kind == "friction":
        for _ in range(int(rng.integers(3, 12))):
            burst = friction_burst(rng) * b * 10 ** (rng.uniform(12, 30) / 20)
            s = int(rng.integers(0, n - 1))
            x[s:s + burst.shape[0]] += burst[: n - s]
        # a continuous rub part of the time
        if rng.random() < 0.5:
            sos = scipy.signal.butter(2, [150.0, rng.uniform(800, 2000)], "bandpass", fs=RATE, output="sos")
            rub = scipy.signal.sosfilt(sos, rng.standard_normal(n))
            am = np.clip(np.sin(2 * np.pi * rng.uniform(0.5, 2) * np.arange(n) / RATE), 0, None) ** 2
            x += rub / rms(rub) * am * b * 10 ** (rng.uniform(3, 15) / 20)
    elif kind == "knock":
        for _ in range(int(rng.integers(2, 9))):
            dur = rng.uniform(0.02, 0.12)
            t = np.arange(int(dur * RATE)) / RATE
            thump = np.exp(-t / (dur / 4)) * np.sin(2 * np.pi * rng.uniform(20, 200) * t)
            click = np.zeros_like(thump)
            k = min(len(t), int(rng.integers(8, 64)))
            click[:k] = rng.standard_normal(k) * rng.uniform(0.2, 1.0)
            imp = (thump + click) * b * 10 ** (rng.uniform(20, 40) / 20)
            s = int(rng.integers(0, n - 1))
            x[s:s + imp.shape[0]] += imp[: n - s]
    elif kind == "no_contact":
        sos = scipy.signal.butter(4, rng.uniform(60, 110), "lowpass", fs=RATE, output="sos")
        x = scipy.signal.sosfilt(sos, x) * 10 ** (-rng.uniform(15, 35) / 20)
        x += rng.standard_normal(n) * b * 10 ** (-rng.uniform(45, 65) / 20)
        if rng.random() < 0.5:  # mains hum picked up by the open piezo
            x += np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * np.arange(n) / RATE) * b * 10 ** (-rng.uniform(20, 35) / 20)
    elif kind == "heart_dominant":
        bpm = rng.uniform(60, 140)
        period = 60.0 / bpm
        h = np.zeros(n)
        t0 = rng.uniform(0, period)
        while t0 < n / RATE:
            for first, off in ((True, 0.0), (False, rng.uniform(0.25, 0.35) * period)):
                s = heart_sound(rng, first)
                i = int((t0 + off) * RATE)
                if i < n:
                    h[i:i + s.shape[0]] += s[: n - i] * (1.0 if first else rng.uniform(0.5, 0.9))
            t0 += period * rng.uniform(0.97, 1.03)
        x += h / rms(h) * b * 10 ** (rng.uniform(12, 30) / 20)
    elif kind == "speech":
        sp = speech[int(rng.integers(len(speech)))]
        sp = np.tile(sp, int(np.ceil(n / sp.shape[0])) + 1)
        s = int(rng.integers(0, sp.shape[0] - n))
        sp = sp[s:s + n].astype(np.float64)
        sos = scipy.signal.butter(3, rng.uniform(800, 3000), "lowpass", fs=RATE, output="sos")
        sp = scipy.signal.sosfilt(sos, sp)
        x += sp / rms(sp) * b * 10 ** (rng.uniform(0, 15) / 20)
    else:
        raise ValueError(kind)
    peak = float(np.max(np.abs(x)))
    if peak > 0.95:  # keep it unclipped: clipping is the rule's job
        x *= 0.95 / peak
    return x.astype(np.float32)


def record_windows(path: Path) -> list[tuple[np.ndarray, int]]:
    """The recording cut into 8 s windows (hop 8 s; a tail >= 2 s is cyclically padded): (audio, available)."""
    a = load_audio(path, RATE).samples
    out = []
    for s in range(0, max(1, a.shape[0]), WIN):
        seg = a[s:s + WIN]
        if seg.shape[0] >= 2 * RATE or (s == 0 and seg.shape[0] > RATE // 4):
            out.append((cyclic_pad(seg, WIN), int(min(seg.shape[0], WIN))))
    return out


def _standardize(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, scale = X.mean(0), X.std(0)
    return mean, np.where(scale > 1e-9, scale, 1.0)


def fit_logistic(X: np.ndarray, y: np.ndarray, k: int, l2: float = 1e-3, iters: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced multinomial logistic regression (L-BFGS on standardized X); returns (coef, intercept)."""
    from scipy.optimize import minimize

    n, d = X.shape
    counts = np.bincount(y, minlength=k).astype(float)
    w = (n / (k * np.maximum(counts, 1)))[y]
    onehot = np.eye(k)[y]

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[: k * d].reshape(k, d), theta[k * d:]
        z = X @ W.T + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        loss = -np.sum(w * np.log(np.clip((p * onehot).sum(1), 1e-12, None))) / n + l2 * np.sum(W * W)
        g = (p - onehot) * w[:, None] / n
        return float(loss), np.concatenate([(g.T @ X + 2 * l2 * W).ravel(), g.sum(0)])

    res = minimize(f, np.zeros(k * d + k), jac=True, method="L-BFGS-B", options={"maxiter": iters})
    return res.x[: k * d].reshape(k, d), res.x[k * d:]


def build(sprsound: Path, seed: int = 0, extra: Any | None = None) -> dict[str, Any]:
    """Features and labels of every window: real (per split) and synthetic (fit / val / test bases).
    ``extra(audio, available)``: optional, its value is stored as each row's ``"extra"`` (e.g. a
    classifier embedding, benchmarks/exp_quality_embedding.py)."""
    from stethoedge.data.sprsound import list_records

    rng = np.random.default_rng(seed)
    recs = list_records(sprsound)
    train_patients = sorted({r.patient for r in recs if r.split == "train"})
    held = set(np.random.default_rng(seed).permutation(train_patients)[: len(train_patients) // 5].tolist())
    bank_fit, bank_test = speech_bank(SENTENCES_FIT, seed), speech_bank(SENTENCES_TEST, seed + 1)
    rows: list[dict[str, Any]] = []
    for r in recs:
        part = ("val" if r.patient in held else "fit") if r.split == "train" else r.split
        real = "unknown" if r.record_label == "Poor Quality" else "ok"
        for w, (audio, avail) in enumerate(record_windows(r.audio_path)):
            rows.append({"part": part, "kind": "real", "label": real, "record": r.stem, "patient": r.patient,
                         "record_label": r.record_label, "window": w, "available": avail,
                         "f": quality_features(audio, avail), "audio": None,
                         "extra": extra(audio, avail) if extra else None})
            if real == "ok" and part in ("fit", "val", "test-inter") and avail == WIN:
                kinds = ARTEFACTS if part != "fit" else (ARTEFACTS[int(rng.integers(len(ARTEFACTS)))],
                                                         ARTEFACTS[int(rng.integers(len(ARTEFACTS)))])
                for kind in kinds:
                    if part != "fit" and rng.random() > 0.4:
                        continue
                    x = add_artefact(audio, kind, rng, bank_test if part == "test-inter" else bank_fit)
                    rows.append({"part": part, "kind": "synthetic", "label": kind, "record": r.stem,
                                 "patient": r.patient, "record_label": r.record_label, "window": w,
                                 "available": WIN, "f": quality_features(x, WIN), "audio": None,
                                 "extra": extra(x, WIN) if extra else None})
                # level variation of good windows so that level alone is not "ok"
                if part == "fit":
                    g = 10 ** (rng.uniform(-15, 10) / 20)
                    x = np.clip(audio * g, -0.95, 0.95)
                    rows.append({"part": part, "kind": "synthetic", "label": "ok", "record": r.stem,
                                 "patient": r.patient, "record_label": r.record_label, "window": w,
                                 "available": WIN, "f": quality_features(x, WIN), "audio": None,
                                 "extra": extra(x, WIN) if extra else None})
    return {"rows": rows, "held_patients": sorted(held)}


def fit_gate(rows: list[dict[str, Any]], fitted_on: str) -> tuple[QualityGate, dict[str, Any]]:
    """Fit on part=fit; threshold on part=val (Youden's J on the real windows)."""
    fit = [r for r in rows if r["part"] == "fit"]
    X = np.array([[r["f"][k] for k in FEATURE_NAMES] for r in fit])
    y = np.array([CLASSES.index(r["label"]) for r in fit])
    mean, scale = _standardize(X)
    coef, intercept = fit_logistic((X - mean) / scale, y, len(CLASSES))
    gate = QualityGate(CLASSES, mean, scale, coef, intercept, 0.5, fitted_on)
    val = [r for r in rows if r["part"] == "val" and r["kind"] == "real"]
    p_ok = np.array([gate.probabilities(r["f"])[0] for r in val])
    bad = np.array([r["label"] == "unknown" for r in val])
    # The largest P(ok) threshold that rejects at most MAX_FALSE_REJECTION of the real good val windows.
    thr = float(np.quantile(p_ok[~bad], MAX_FALSE_REJECTION))
    gate.threshold = round(thr, 6)
    return gate, {"threshold_rule": f"P(ok) quantile rejecting {MAX_FALSE_REJECTION:.0%} of real good val windows",
                  "threshold": gate.threshold, "val_false_rejection": float(np.mean(p_ok[~bad] < gate.threshold)),
                  "val_poor_detected": float(np.mean(p_ok[bad] < gate.threshold)), "fit_windows": int(len(fit)),
                  "fit_class_counts": {c: int((y == i).sum()) for i, c in enumerate(CLASSES)}}


MAX_FALSE_REJECTION = 0.05


def save_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """Cache the features and labels of every window (npz, no pickles)."""
    keys = ("part", "kind", "label", "record", "patient", "record_label")
    np.savez(path, X=np.array([[r["f"][k] for k in FEATURE_NAMES] for r in rows]),
             available=np.array([r["available"] for r in rows]), window=np.array([r["window"] for r in rows]),
             **{k: np.array([r[k] for r in rows]) for k in keys})


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Rows cached by ``save_rows``."""
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    keys = ("part", "kind", "label", "record", "patient", "record_label")
    return [{**{k: str(d[k][i]) for k in keys}, "available": int(d["available"][i]), "window": int(d["window"][i]),
             "f": dict(zip(FEATURE_NAMES, map(float, d["X"][i]))), "audio": None} for i in range(len(d["X"]))]


def task21(truth: list[str], pred: list[str]) -> dict[str, float]:
    """SPRSound Task 2-1 (record level Normal / Adventitious / Poor Quality) as used here:
    Se = correctly classified non-Normal records (Adventitious and Poor Quality, exact class) / all
    non-Normal records, Sp = correct Normal / all Normal, Score = mean(Average Score, Harmonic Score)."""
    from stethoedge.data.evaluation import challenge_scores

    t, p = np.array(truth), np.array(pred)
    normal = t == "Normal"
    se = float(np.mean(p[~normal] == t[~normal])) if (~normal).any() else float("nan")
    sp = float(np.mean(p[normal] == "Normal")) if normal.any() else float("nan")
    return challenge_scores(se, sp) if np.isfinite(se) and np.isfinite(sp) else {"score": float("nan")}


def record_bootstrap(truth: list[str], pred: list[str], patients: list[str], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the Task 2-1 Score, resampling patients (all their records) with replacement."""
    rng = np.random.default_rng(seed)
    pts = np.array(patients)
    ids = np.unique(pts)
    groups = [np.flatnonzero(pts == p) for p in ids]
    t, p = np.array(truth), np.array(pred)
    draws = []
    for _ in range(n_boot):
        idx = np.concatenate([groups[i] for i in rng.integers(0, len(ids), len(ids))])
        s = task21(list(t[idx]), list(p[idx]))["score"]
        if np.isfinite(s):
            draws.append(s)
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def evaluate(rows: list[dict[str, Any]], gate: QualityGate, bundle: Path | None, sprsound: Path | None = None) -> dict[str, Any]:
    """False rejection, Poor-Quality detection, per-artefact detection, and Task 2-1 with the model."""
    out: dict[str, Any] = {"windows": {}, "artefacts": {}, "task21": {}}
    for part in ("val", "test-inter", "test-intra"):
        real = [r for r in rows if r["part"] == part and r["kind"] == "real"]
        verdicts = [gate.verdict(r["f"]) for r in real]
        rejected = np.array([not v.ok for v in verdicts])
        bad = np.array([r["label"] == "unknown" for r in real])
        out["windows"][part] = {"good_windows": int((~bad).sum()), "poor_windows": int(bad.sum()),
                                "false_rejection": float(rejected[~bad].mean()),
                                "poor_quality_detected": float(rejected[bad].mean()) if bad.any() else float("nan")}
        for r, v in zip(real, verdicts):
            r.setdefault("verdict", {})[part] = v
    for part in ("val", "test-inter"):
        syn = [r for r in rows if r["part"] == part and r["kind"] == "synthetic"]
        out["artefacts"][part] = {}
        for kind in ARTEFACTS:
            vs = [gate.verdict(r["f"]) for r in syn if r["label"] == kind]
            if vs:
                out["artefacts"][part][kind] = {"n": len(vs), "detected": float(np.mean([not v.ok for v in vs])),
                                                "reason_correct": float(np.mean([v.reason == kind for v in vs]))}
    if bundle is None or sprsound is None:
        return out
    from stethoedge.runtime.confidence import Calibration
    from stethoedge.runtime.engine import Classifier
    clf = Classifier.open(bundle, threads=1)
    cal = Calibration.from_manifest(clf.bundle.manifest)
    labels = list(clf.bundle.labels)
    for part in ("test-inter", "test-intra"):
        recs: dict[str, dict[str, Any]] = {}
        for r in (x for x in rows if x["part"] == part and x["kind"] == "real"):
            recs.setdefault(r["record"], {"truth": r["record_label"], "patient": r["patient"], "windows": []})["windows"].append(r)
        truth, pred_gate, pred_model, pts = [], [], [], []
        for stem, rec in recs.items():
            folder = {"test-inter": "test2022_inter", "test-intra": "test2022_intra"}[part]
            wins = record_windows(Path(sprsound) / folder / f"{stem}.flac")
            probs = np.mean([cal.probabilities(clf.logits(a)) for a, _ in wins], axis=0)
            adv = "Normal" if labels[int(np.argmax(probs))] == "normal" else "Adventitious"
            poor = np.mean([not w["verdict"][part].ok for w in rec["windows"]]) >= 0.5
            t = rec["truth"] if rec["truth"] in ("Normal", "Poor Quality") else "Adventitious"
            truth.append(t)
            pred_model.append(adv)
            pred_gate.append("Poor Quality" if poor else adv)
            pts.append(rec["patient"])
        res = {}
        for name, pred in (("always_normal", ["Normal"] * len(truth)), ("model_without_gate", pred_model),
                           ("model_with_gate", pred_gate)):
            res[name] = dict(task21(truth, pred), ci95=record_bootstrap(truth, pred, pts))
        res["records"] = {k: int(sum(t == k for t in truth)) for k in ("Normal", "Adventitious", "Poor Quality")}
        res["patients"] = int(len(set(pts)))
        out["task21"][part] = res
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: build the data, fit, choose the threshold on val, write the gate and the report."""
    ap = argparse.ArgumentParser(prog="python -m stethoedge.train.quality", description=__doc__.splitlines()[0])
    ap.add_argument("--sprsound", required=True)
    ap.add_argument("--out", default="models/reports")
    ap.add_argument("--gate", default="models/reports/quality.npz")
    ap.add_argument("--bundle", default=None, help="bundle for the Task 2-1 record-level evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", action="store_true", help="reuse OUT/quality-features.npz when present")
    args = ap.parse_args(argv)
    t0 = time.time()
    cache = Path(args.out) / "quality-features.npz"
    if args.cache and cache.is_file():
        rows = load_rows(cache)
    else:
        rows = build(Path(args.sprsound), args.seed)["rows"]
        save_rows(rows, cache)
    held = len({r["patient"] for r in rows if r["part"] == "val"})
    print(f"{len(rows)} windows in {time.time() - t0:.0f} s", flush=True)
    gate, fit_info = fit_gate(rows, f"SPRSound train2022 minus {held} held-out patients "
                                    f"(+ synthetic artefacts on its good windows); threshold on the held-out patients")
    gate.to_file(args.gate)
    report = {"fit": fit_info, **evaluate(rows, gate, Path(args.bundle) if args.bundle else None, Path(args.sprsound))}
    atomic_write_text(Path(args.out) / "quality.json", json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
