"""Calibrated confidence and abstention for a trained run (torch-free: numpy + scipy).

Reads a run's ``predictions.npz`` (``model_logits``, ``label``, ``role``, ``patient``), fits the
calibration on ``role == "val"`` rows ONLY, chooses the abstention threshold on val, and reports
ECE (15 equal-width bins), NLL and coverage/accuracy on val and on every test role.

Methods compared (chosen on val by 2-fold patient cross-validation of the NLL, never on test):

* ``temperature``: softmax(logits / T), one parameter.
* ``vector``: softmax(w * logits + b), per-class scale and bias (2 x classes parameters).

The runtime applies only temperature scaling (``"confidence"`` section of the bundle manifest);
vector scaling is measured to say whether it would be worth it.

Abstention rule: the threshold ``abstain_below`` is the calibrated-confidence quantile that keeps
``target_coverage`` (default 90 %) of the validation windows; windows below it are "uncertain".

    python -m stethoedge.train.confidence /work/runs/edge-b --out models/reports
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from stethoedge.runtime.outputs import atomic_write_text, output_path

N_BINS = 15
TEST_ROLES = ("test-inter", "test-intra", "eval", "test-icbhi")
T_RANGE = (0.05, 20.0)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise stable softmax."""
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error of the top-1 confidence, ``n_bins`` equal-width bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, float]]:
    """Per-bin count, mean confidence and accuracy (the reliability diagram's data)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()),
                    "confidence": float(conf[m].mean()) if m.any() else float("nan"),
                    "accuracy": float(correct[m].mean()) if m.any() else float("nan")})
    return out


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T in T_RANGE minimising the NLL of softmax(logits / T)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda lt: nll(softmax(logits / np.exp(lt)), y),
                          bounds=(np.log(T_RANGE[0]), np.log(T_RANGE[1])), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


def fit_vector(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vector scaling: per-class (w, b) minimising the NLL of softmax(w * logits + b) (L-BFGS)."""
    from scipy.optimize import minimize

    k = logits.shape[1]
    onehot = np.eye(k)[y]

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k:]
        p = softmax(logits * w + b)
        loss = -np.mean(np.log(np.clip((p * onehot).sum(1), 1e-12, None)))
        g = (p - onehot) / len(y)
        return float(loss), np.concatenate([(g * logits).sum(0), g.sum(0)])

    res = minimize(f, np.concatenate([np.ones(k), np.zeros(k)]), jac=True, method="L-BFGS-B")
    return res.x[:k], res.x[k:]


def _patient_folds(patients: np.ndarray, n_folds: int = 2, seed: int = 0) -> list[np.ndarray]:
    ids = np.unique(patients)
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    return [np.isin(patients, ids[i::n_folds]) for i in range(n_folds)]


def cv_nll(logits: np.ndarray, y: np.ndarray, patients: np.ndarray) -> dict[str, float]:
    """2-fold patient cross-validated NLL of each method on the validation rows (method choice)."""
    out = {"none": 0.0, "temperature": 0.0, "vector": 0.0}
    for held in _patient_folds(patients):
        fit, ev = ~held, held
        t = fit_temperature(logits[fit], y[fit])
        w, b = fit_vector(logits[fit], y[fit])
        share = ev.mean()
        out["none"] += share * nll(softmax(logits[ev]), y[ev])
        out["temperature"] += share * nll(softmax(logits[ev] / t), y[ev])
        out["vector"] += share * nll(softmax(logits[ev] * w + b), y[ev])
    return {k: float(v) for k, v in out.items()}


def choose_threshold(probs_val: np.ndarray, target_coverage: float) -> float:
    """Smallest calibrated-confidence threshold that keeps ``target_coverage`` of the val windows."""
    conf = np.sort(probs_val.max(axis=1))
    k = int(np.floor((1.0 - target_coverage) * len(conf)))
    return float(conf[min(k, len(conf) - 1)])


def coverage_curve(probs: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> list[dict[str, float]]:
    """Coverage and accuracy of the kept windows for each threshold."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    rows = []
    for t in thresholds:
        keep = conf >= t
        rows.append({"threshold": float(t), "coverage": float(keep.mean()),
                     "accuracy": float(correct[keep].mean()) if keep.any() else float("nan")})
    return rows


def analyse(run: Path, target_coverage: float = 0.9) -> dict[str, Any]:
    """Fit on val, report on every role; returns the JSON-ready report (also the manifest section)."""
    with np.load(run / "predictions.npz", allow_pickle=False) as d:
        logits = d["model_logits"].astype(np.float64)
        y, role, patient = d["label"].astype(np.int64), d["role"], d["patient"]
    val = role == "val"
    t = fit_temperature(logits[val], y[val])
    w, b = fit_vector(logits[val], y[val])
    cv = cv_nll(logits[val], y[val], patient[val])
    p_val = softmax(logits[val] / t)
    thr = choose_threshold(p_val, target_coverage)
    report: dict[str, Any] = {
        "run": str(run), "fitted_on": f"{run.name} predictions.npz role=val ({int(val.sum())} windows, "
                                      f"{len(np.unique(patient[val]))} patients)",
        "temperature": t, "vector_scaling": {"w": w.tolist(), "b": b.tolist()},
        "cv_nll_val": cv, "abstain_rule": f"threshold keeping {target_coverage:.0%} of val windows",
        "abstain_below": thr, "splits": {},
    }
    for name in ("val",) + TEST_ROLES:
        m = role == name
        if not m.any():
            continue
        z, yy = logits[m], y[m]
        p0, pt, pv = softmax(z), softmax(z / t), softmax(z * w + b)
        keep = pt.max(1) >= thr
        acc = pt.argmax(1) == yy
        report["splits"][name] = {
            "windows": int(m.sum()), "patients": int(len(np.unique(patient[m]))),
            "ece_before": ece(p0, yy), "ece_temperature": ece(pt, yy), "ece_vector": ece(pv, yy),
            "nll_before": nll(p0, yy), "nll_temperature": nll(pt, yy), "nll_vector": nll(pv, yy),
            "accuracy_all": float(acc.mean()), "coverage": float(keep.mean()),
            "accuracy_kept": float(acc[keep].mean()) if keep.any() else float("nan"),
            "reliability_before": reliability(p0, yy), "reliability_after": reliability(pt, yy),
            "curve": coverage_curve(pt, yy, np.linspace(0.25, 0.99, 38)),
        }
    v = report["splits"]["val"]
    report["manifest_section"] = {
        "method": "temperature", "temperature": round(t, 6), "abstain_below": round(thr, 6),
        "fitted_on": report["fitted_on"], "abstain_rule": report["abstain_rule"],
        "ece_val_before": round(v["ece_before"], 6), "ece_val_after": round(v["ece_temperature"], 6),
    }
    return report


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    """Reliability diagrams (before/after per split) and the coverage/accuracy curves, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = report["splits"]
    fig, axes = plt.subplots(1, len(splits), figsize=(3.2 * len(splits), 3.3), sharey=True)
    for ax, (name, s) in zip(axes, splits.items()):
        for key, colour, lab in (("reliability_before", "tab:red", f"raw ECE {s['ece_before']:.3f}"),
                                 ("reliability_after", "tab:blue", f"T={report['temperature']:.2f} ECE {s['ece_temperature']:.3f}")):
            bins = [r for r in s[key] if r["n"] > 0]
            ax.plot([r["confidence"] for r in bins], [r["accuracy"] for r in bins], "o-", color=colour, label=lab, ms=3)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(f"{name} ({s['windows']} windows)", fontsize=9)
        ax.set_xlabel("confidence")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("accuracy")
    paths = [out / "respiratory-mn04.reliability.png"]
    with output_path(paths[0]) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, s in splits.items():
        c = s["curve"]
        ax.plot([r["coverage"] for r in c], [r["accuracy"] for r in c], label=name)
        ax.plot([s["coverage"]], [s["accuracy_kept"]], "ko", ms=3)
    ax.set_xlabel("coverage (windows not abstained)"), ax.set_ylabel("accuracy of kept windows")
    ax.set_title(f"abstain below {report['abstain_below']:.3f} (dots; chosen on val)", fontsize=9)
    ax.legend(fontsize=7)
    paths.append(out / "respiratory-mn04.coverage.png")
    with output_path(paths[1]) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI: fit + report; writes ``<out>/respiratory-mn04.confidence.json`` and two PNGs."""
    ap = argparse.ArgumentParser(prog="python -m stethoedge.train.confidence", description=__doc__.splitlines()[0])
    ap.add_argument("run", help="training run directory with predictions.npz")
    ap.add_argument("--out", default="models/reports", help="report directory (default %(default)s)")
    ap.add_argument("--coverage", type=float, default=0.9, help="val coverage the threshold keeps (default 0.9)")
    args = ap.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    if not (run / "predictions.npz").is_file():
        print(f"error: {run}: no predictions.npz", file=sys.stderr)
        return 2
    report = analyse(run, args.coverage)
    atomic_write_text(out / "respiratory-mn04.confidence.json", json.dumps(report, indent=1) + "\n")
    plot(report, out)
    print(f"T = {report['temperature']:.4f}; abstain below {report['abstain_below']:.4f}; cv NLL {report['cv_nll_val']}")
    print(f"{'split':<11} {'n':>5} {'ECE raw':>8} {'ECE T':>7} {'ECE vec':>8} {'NLL raw':>8} {'NLL T':>7} "
          f"{'NLL vec':>8} {'acc':>6} {'cover':>6} {'acc kept':>8}")
    for name, s in report["splits"].items():
        print(f"{name:<11} {s['windows']:>5} {s['ece_before']:8.4f} {s['ece_temperature']:7.4f} {s['ece_vector']:8.4f} "
              f"{s['nll_before']:8.4f} {s['nll_temperature']:7.4f} {s['nll_vector']:8.4f} {s['accuracy_all']:6.3f} "
              f"{s['coverage']:6.3f} {s['accuracy_kept']:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
