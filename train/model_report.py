"""The evaluation report of a real-data run: every model and baseline on every held-out role, as JSON and Markdown.

``python -m stethoedge.train.model_report RUN [--yamnet EMB.npy]`` reads RUN/predictions.npz (the
shipped model, the frozen-embedding probe and always-"normal", written by the recipe), optionally
adds a logistic probe on frozen YAMNet embeddings (train/yamnet_embed.py, same rows and splits,
L2 chosen on validation patients), and writes RUN/evaluation.json and RUN/evaluation.md: for each
role and source, each model's 4-class ICBHI Sp/Se/Score and macro-F1 and the SPRSound challenge
binary and 4-class Scores, with 95 % patient-bootstrap intervals.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from stethoedge.runtime.bundle import atomic_write_text

ROLE_TITLES = {
    "test-inter": "SPRSound test2022_inter (41 unseen patients: the honest SPRSound number)",
    "test-intra": "SPRSound test2022_intra (patients also in train2022: optimistic)",
    "eval": "ICBHI official-train recordings, patients held out of training and selection",
    "test-icbhi": "ICBHI official-TEST recordings in icbhi_sample (patients 101, 102, 104; Litt3200 unseen in training)",
    "val": "validation patients (used for selection: not an independent estimate)",
}
COLUMNS = (("icbhi_sp", "Sp"), ("icbhi_se", "Se"), ("icbhi_score", "ICBHI Score"), ("macro_f1", "macro-F1"),
           ("binary_score", "SPRSound binary Score"), ("multi_score", "SPRSound 4-class Score"))


def yamnet_probe_predictions(embeddings: np.ndarray, data: Any) -> np.ndarray:
    """Argmax predictions of a logistic probe on YAMNet embeddings, fit on the run's train rows, L2 on val."""
    import torch

    from stethoedge.train.edge_learner import fit_probe, sample_weights

    role, label, source = data["role"], data["label"], data["source"]
    if len(embeddings) != len(label):
        raise ValueError(f"{len(embeddings)} YAMNet embeddings for {len(label)} windows: not the same table")
    tr, va = role == "train", role == "val"
    probe, _ = fit_probe(embeddings[tr], label[tr], sample_weights(label[tr], source[tr]), embeddings[va], label[va],
                         source[va])
    with torch.no_grad():
        return probe(torch.from_numpy(embeddings.astype(np.float32))).numpy().argmax(1)


def _cell(rep: dict[str, Any], key: str) -> str:
    value = rep["metrics"].get(key, float("nan"))
    lo, hi = rep["ci95"].get(key, (float("nan"), float("nan")))
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.3f} [{lo:.2f}, {hi:.2f}]"


def render_markdown(evaluation: dict[str, dict[str, Any]]) -> str:
    """One table per role/source (rows: models; cells: value [95 % patient-bootstrap interval])."""
    lines = []
    order = ["test-inter/sprsound", "test-intra/sprsound", "eval/icbhi", "test-icbhi/icbhi", "val/sprsound", "val/icbhi"]
    keys = [k for k in order if k in evaluation] + sorted(k for k in evaluation if k not in order)
    for key in keys:
        rows = evaluation[key]
        first = next(iter(rows.values()))
        role = key.split("/")[0]
        title = ROLE_TITLES.get(role, role) + (f" — device {key.split('/')[2]}" if key.count("/") == 2 else "")
        lines += [f"#### {key}: {title}", "",
                  f"{first['n_windows']} windows, {first['n_patients']} patients; class counts (normal, crackle, "
                  f"wheeze, both) {np.sum(first['confusion_matrix'], axis=1).tolist()}", "",
                  "| model | " + " | ".join(c for _, c in COLUMNS) + " |",
                  "|---|" + "---|" * len(COLUMNS)]
        for name, rep in rows.items():
            lines.append(f"| {name} | " + " | ".join(_cell(rep, k) for k, _ in COLUMNS) + " |")
        lines.append("")
    return "\n".join(lines)


def build_report(run: str | Path, yamnet: str | Path | None = None, n_boot: int = 1000) -> dict[str, Any]:
    """Evaluate every prediction set of RUN (plus the YAMNet probe) and write evaluation.json / .md."""
    from stethoedge.train.edge_learner import evaluate_table
    from stethoedge.train.sources import ExampleTable

    run = Path(run)
    data = dict(np.load(run / "predictions.npz"))
    names = ["always-normal", "mn04 frozen + logistic probe", "mn04 fine-tuned (shipped)"]
    predictions = {n: data[n] for n in names}
    if yamnet is not None:
        predictions = {"always-normal": predictions["always-normal"],
                       "YAMNet frozen + logistic probe": yamnet_probe_predictions(np.load(yamnet), data),
                       **{n: predictions[n] for n in names[1:]}}
    n = len(data["label"])
    table = ExampleTable(label=data["label"], role=data["role"], source=data["source"], device=data["device"],
                         patient=data["patient"], recording=np.full(n, ""), event_type=np.full(n, ""),
                         features=np.zeros((n, 0)))
    evaluation = evaluate_table(table, predictions, n_boot=n_boot)
    atomic_write_text(run / "evaluation.json", json.dumps(evaluation, indent=1, default=float) + "\n")
    atomic_write_text(run / "evaluation.md", render_markdown(evaluation) + "\n")
    return evaluation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--yamnet", default=None, help="YAMNet embeddings of the same table (train/yamnet_embed.py)")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    build_report(args.run, args.yamnet, args.n_boot)
    print((Path(args.run) / "evaluation.md").read_text())


if __name__ == "__main__":
    main()
