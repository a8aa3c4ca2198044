"""The evaluation of a real-data run as Markdown tables (MODEL_CARD.md takes them as they are).

``python -m stethoedge.train.model_report RUN`` renders RUN/metrics.json's evaluation (written by
the recipe: every model and baseline on every role and source) as RUN/evaluation.md: each model's
4-class ICBHI Sp/Se/Score and macro-F1 and the SPRSound challenge binary and 4-class Scores, each
with its 95 % patient-bootstrap interval.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from stethoedge.runtime.outputs import atomic_write_text

ROLE_TITLES = {
    "test-inter": "SPRSound test2022_inter (41 unseen patients: the honest SPRSound number)",
    "test-intra": "SPRSound test2022_intra (patients also in train2022: optimistic)",
    "eval": "ICBHI official-train recordings, patients held out of training and selection",
    "test-icbhi": "ICBHI official-TEST recordings in icbhi_sample (patients 101, 102, 104; Litt3200 unseen in training)",
    "val": "validation patients (used for selection: not an independent estimate)",
}
COLUMNS = (("icbhi_sp", "Sp"), ("icbhi_se", "Se"), ("icbhi_score", "ICBHI Score"), ("macro_f1", "macro-F1"),
           ("binary_score", "SPRSound binary Score"), ("multi_score", "SPRSound 4-class Score"))


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


def build_report(run: str | Path, extra_runs: tuple[str | Path, ...] = (), n_boot: int = 1000) -> str:
    """Render RUN's evaluation as RUN/evaluation.md (and .json); return the Markdown.

    ``extra_runs``: other runs over the same table (e.g. the random-initialisation baseline); their
    models join every table, evaluated on the same windows and patients.
    """
    run = Path(run)
    if not extra_runs:
        evaluation = json.loads((run / "metrics.json").read_text())["evaluation"]
    else:
        from stethoedge.train.edge_learner import evaluate_table
        from stethoedge.train.sources import ExampleTable

        main = dict(np.load(run / "predictions.npz"))
        keys = ("label", "role", "source", "patient", "device")
        predictions = {k: v for k, v in main.items() if k not in keys and not k.endswith("_logits")}
        for extra in extra_runs:
            other = dict(np.load(Path(extra) / "predictions.npz"))
            if any(not np.array_equal(other[k], main[k]) for k in keys):
                raise ValueError(f"{extra}: not the same windows as {run}")
            predictions |= {k: v for k, v in other.items()
                            if k not in keys and not k.endswith("_logits") and k not in predictions}
        n = len(main["label"])
        table = ExampleTable(label=main["label"], role=main["role"], source=main["source"], device=main["device"],
                             patient=main["patient"], recording=np.full(n, ""), event_type=np.full(n, ""),
                             features=np.zeros((n, 0)))
        evaluation = evaluate_table(table, predictions, n_boot=n_boot)
        atomic_write_text(run / "evaluation.json", json.dumps(evaluation, indent=1, default=float) + "\n")
    text = render_markdown(evaluation)
    atomic_write_text(run / "evaluation.md", text + "\n")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run directory of `stethoedge train-edge`")
    ap.add_argument("--extra", action="append", default=[], help="another run over the same table (repeatable)")
    args = ap.parse_args()
    print(build_report(args.run, tuple(args.extra)))


if __name__ == "__main__":
    main()
