"""Experiment: should the quality gate read cheap signal features, the classifier's embedding, or both?

Issue 14 asks to choose "by measuring". Same windows, labels, patient split and threshold rule as
train/quality.py (fit on train2022 minus the held-out patients; P(ok) threshold rejecting 5 % of the
real good validation windows; test2022_inter / intra reported): a class-balanced multinomial logistic
regression on (a) the 16 ``quality_features`` (what ships), (b) the shipped model's pooled mn04
embedding of the same 8 s window (the torch twin of the exported network), (c) both. Prints false
rejection, Poor Quality detection and per-artefact detection for each, and writes OUT.json.

    python benchmarks/exp_quality_embedding.py --sprsound ../shared/data/sprsound --run /work/runs/edge-b \
        --out models/reports/quality-embedding-experiment
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from stethoedge.runtime.features import compute_features
from stethoedge.runtime.outputs import atomic_write_text
from stethoedge.runtime.quality import FEATURE_NAMES
from stethoedge.train.checkpoint import load_checkpoint
from stethoedge.train.quality import ARTEFACTS, CLASSES, MAX_FALSE_REJECTION, _standardize, build, fit_logistic


def _probs(X: np.ndarray, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, b: np.ndarray) -> np.ndarray:
    z = ((X - mean) / scale) @ coef.T + b
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def evaluate_variant(X: np.ndarray, rows: list[dict], l2: float) -> dict:
    """Fit on part=fit, threshold on real val windows, report every part (as train/quality.py)."""
    part = np.array([r["part"] for r in rows])
    kind = np.array([r["kind"] for r in rows])
    label = np.array([r["label"] for r in rows])
    fit = part == "fit"
    mean, scale = _standardize(X[fit])
    coef, b = fit_logistic((X[fit] - mean) / scale, np.array([CLASSES.index(x) for x in label[fit]]), len(CLASSES), l2)
    p_ok = _probs(X, mean, scale, coef, b)[:, 0]
    val_good = (part == "val") & (kind == "real") & (label == "ok")
    thr = float(np.quantile(p_ok[val_good], MAX_FALSE_REJECTION))
    rejected = p_ok < thr
    out: dict = {"threshold": thr, "windows": {}, "artefacts": {}}
    for pt in ("val", "test-inter", "test-intra"):
        real = (part == pt) & (kind == "real")
        good, poor = real & (label == "ok"), real & (label == "unknown")
        out["windows"][pt] = {"false_rejection": float(rejected[good].mean()),
                              "poor_quality_detected": float(rejected[poor].mean()) if poor.any() else None,
                              "good": int(good.sum()), "poor": int(poor.sum())}
    for pt in ("val", "test-inter"):
        out["artefacts"][pt] = {a: float(rejected[(part == pt) & (kind == "synthetic") & (label == a)].mean())
                                for a in ARTEFACTS}
    return out


def main() -> int:
    """Build the windows with embeddings, fit the three variants, print and write the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sprsound", default="../shared/data/sprsound")
    ap.add_argument("--run", required=True, help="training run whose checkpoint.pt is the shipped model")
    ap.add_argument("--out", default="models/reports/quality-embedding-experiment")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.run)
    model, spec = ckpt.model.eval(), ckpt.spec

    def embed(audio: np.ndarray, available: int) -> np.ndarray:
        with torch.no_grad():
            return model.embed(torch.from_numpy(compute_features(audio, spec)[None])).numpy()[0]

    t0 = time.time()
    rows = build(Path(args.sprsound), 0, extra=embed)["rows"]
    built = time.time() - t0
    cheap = np.array([[r["f"][k] for k in FEATURE_NAMES] for r in rows])
    emb = np.stack([r["extra"] for r in rows])
    variants = {"cheap features (16, shipped)": (cheap, 1e-3), f"mn04 embedding ({emb.shape[1]})": (emb, 1e-2),
                "both": (np.hstack([cheap, emb]), 1e-2)}
    report = {"windows": len(rows), "build_seconds": built, "variants": {}}
    for name, (X, l2) in variants.items():
        r = evaluate_variant(X, rows, l2)
        report["variants"][name] = r
        w, a = r["windows"], r["artefacts"]["test-inter"]
        print(f"{name:<30} FRR val {w['val']['false_rejection']:.3f} inter {w['test-inter']['false_rejection']:.3f} "
              f"intra {w['test-intra']['false_rejection']:.3f} | PQ detected val {w['val']['poor_quality_detected']:.3f} "
              f"inter {w['test-inter']['poor_quality_detected']:.3f} | artefacts (test-inter) "
              + " ".join(f"{k} {v:.3f}" for k, v in a.items()), flush=True)
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
