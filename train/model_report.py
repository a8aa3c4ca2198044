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


def build_report(run: str | Path) -> str:
    """Render RUN/metrics.json's evaluation as RUN/evaluation.md; return the Markdown."""
    run = Path(run)
    metrics = json.loads((run / "metrics.json").read_text())
    text = render_markdown(metrics["evaluation"])
    atomic_write_text(run / "evaluation.md", text + "\n")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run directory of `stethoedge train-edge`")
    print(build_report(ap.parse_args().run))


if __name__ == "__main__":
    main()
