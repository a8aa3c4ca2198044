"""Does synthetic data help on YOUR data? Baseline vs each generator (Mixed-N) vs the ensemble, same seeds.

For every seed: train the baseline classifier; fit the DiffWave vocoder and each mel generator
on the TRAINING split only (validation and test patients never reach a generator); write a
Mixed-N directory per generator and train the classifier with it as ``TrainConfig.synthetic``
(optionally with adversarial fine-tuning, ``aft``); ``diffwave`` as a kind means re-synthesis of
real training mels through the vocoder. The ensemble averages the class probabilities of all
runs of that seed (``stethoedge.train.ensemble.save_ensemble_run``, exportable as one model).
One table compares the conditions on the test split: Score, macro-F1, AUROC, mean +- sd over seeds.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stethoedge.runtime.outputs import atomic_write_text
from stethoedge.runtime.errors import DataError
from stethoedge.train.generators import MEL_KINDS, create
from stethoedge.train.generators.data import load_melsets
from stethoedge.train.mixed import plan_counts, write_mixed_dataset
from stethoedge.train.progress import Stages, torch_threads

METRICS: tuple[tuple[str, str], ...] = (("score", "Score"), ("macro_f1", "macro-F1"), ("auroc", "AUROC"))


@dataclass
class ExperimentConfig:
    """What to compare and at which sizes (defaults: a CPU-sized study; raise them on a GPU)."""

    data: str
    out: str
    kinds: list[str] = field(default_factory=lambda: list(MEL_KINDS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    preset: str = "nano"
    epochs: int = 8
    batch_size: int = 16
    n: int = 50  # synthetic samples per class (see mode)
    mode: str = "minority"  # per-class | minority | balance
    gen_classes: list[int] | None = None  # classes generators train on (None: all)
    n_mels: int = 128
    n_frames: int = 256
    gen_steps: int = 2000
    vocoder_steps: int = 2000
    generator_config: dict[str, dict[str, Any]] = field(default_factory=dict)  # per kind: config overrides
    vocoder_config: dict[str, Any] = field(default_factory=dict)
    aft: bool = False
    ensemble: bool = True
    val_fraction: float = 0.25
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads for everything (None: torch's default, one per core)
    train_overrides: dict[str, Any] = field(default_factory=dict)  # extra TrainConfig fields


def _train(cfg: ExperimentConfig, out: Path, seed: int, synthetic: list[str] | None = None) -> dict[str, Any]:
    from stethoedge.train.trainer import TrainConfig, train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    options: dict[str, Any] = {"data": cfg.data, "out": str(out), "preset": cfg.preset, "epochs": cfg.epochs,
                               "batch_size": cfg.batch_size, "seed": seed, "val_fraction": cfg.val_fraction,
                               **cfg.train_overrides}
    if synthetic:
        if "synthetic" not in names:
            raise DataError("this trainer has no TrainConfig.synthetic: Mixed-N training is not available")
        options["synthetic"] = synthetic
        if cfg.aft:
            options["aft"] = True
    return train(TrainConfig(**options))


def _test_summary(metrics: dict[str, Any] | None) -> dict[str, float]:
    if not metrics:
        return {}
    auroc = metrics.get("auroc", {}).get("macro", float("nan")) if isinstance(metrics.get("auroc"), dict) else float("nan")
    return {"score": float(metrics["score"]), "macro_f1": float(metrics["macro_f1"]), "auroc": float(auroc)}


def evaluate_ensemble(run_dirs: list[Path], out: Path, data: str, val_fraction: float, seed: int) -> dict[str, Any]:
    """Save the probability-averaging ensemble of ``run_dirs`` to ``out`` and evaluate it on the test split."""
    from stethoedge.train.checkpoint import load_checkpoint
    from stethoedge.train.dataset import fbank_batches, load_windows, split_recordings
    from stethoedge.train.ensemble import save_ensemble_run
    from stethoedge.data.metrics import evaluate, softmax

    save_ensemble_run([str(r) for r in run_dirs], out)
    loaded = load_checkpoint(out)
    test = load_windows(split_recordings(data, val_fraction, seed)["test"], loaded.spec, desc="loading test")
    if len(test) == 0:
        raise DataError(f"{data}: no test cycles to evaluate the ensemble on")
    feats = fbank_batches(test.audio, loaded.spec)
    with torch.no_grad():
        logits = torch.cat([loaded.model(feats[i:i + 64]) for i in range(0, len(feats), 64)]).numpy()
    probs = softmax(logits)
    metrics = evaluate(test.labels, probs.argmax(1), probs)
    atomic_write_text(out / "metrics.json", json.dumps({"test": metrics, "members": [str(r) for r in run_dirs]},
                                                       indent=2) + "\n")
    return metrics


def summarize(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """{condition: {metric: {mean, sd, n}}} over seeds (sample sd; 0 for one seed)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for condition, runs in results.items():
        out[condition] = {}
        for key, _ in METRICS:
            values = np.array([r[key] for r in runs if key in r and np.isfinite(r[key])], dtype=np.float64)
            out[condition][key] = {"mean": float(values.mean()) if values.size else float("nan"),
                                   "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0, "n": int(values.size)}
    return out


def comparison_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """One markdown table: condition | Score | macro-F1 | AUROC (mean +- sd over seeds)."""
    lines = ["| condition | " + " | ".join(label for _, label in METRICS) + " | seeds |",
             "|---|" + "---|" * (len(METRICS) + 1)]
    for condition, stats in summary.items():
        cells = [f"{stats[k]['mean']:.3f} +- {stats[k]['sd']:.3f}" for k, _ in METRICS]
        lines.append(f"| {condition} | " + " | ".join(cells) + f" | {stats['score']['n']} |")
    return "\n".join(lines) + "\n"


def stage_count(cfg: ExperimentConfig) -> int:
    """Stages ``run_experiment`` goes through: per seed the baseline, the vocoder, per kind (fit,) synthesise
    and train, and the ensemble."""
    per_kind = sum(3 if kind != "diffwave" else 2 for kind in cfg.kinds)
    per_seed = 1 + ((1 + per_kind) if cfg.kinds else 0) + (1 if cfg.ensemble and cfg.kinds else 0)
    return per_seed * len(cfg.seeds)


def describe(cfg: ExperimentConfig) -> str:
    """One line with every size the experiment will run at (printed before it starts).

    Builds each generator once on the way, so a bad configuration (an unknown field, a mel or frame
    count the network cannot down-sample) is a DataError before any training starts.
    """
    def sizes(kind: str, overrides: dict[str, Any]) -> str:
        config = create(kind, n_mels=cfg.n_mels, n_frames=cfg.n_frames, **overrides).config
        shown = ("width", "batch_size", *(("layers", "timesteps") if kind == "diffwave" else ()), *sorted(overrides))
        items = [f"{k} {getattr(config, k)}" for k in dict.fromkeys(shown) if hasattr(config, k)]
        if kind == "diffwave":  # the channels the layers really get: residual_channels x width
            items = [i for i in items if not i.startswith("residual_channels ")]
            items.insert(2, f"channels {config.channels([config.residual_channels])[0]}")
        return ", ".join(items)

    parts = [f"{len(cfg.seeds)} seed(s) x (baseline" + "".join(f" + {k}" for k in cfg.kinds)
             + (" + ensemble" if cfg.ensemble and cfg.kinds else "") + f"): {stage_count(cfg)} stages",
             f"classifier preset {cfg.preset}, {cfg.epochs} epoch(s), batch {cfg.batch_size}"]
    if cfg.kinds:
        parts.append(f"mels {cfg.n_mels} x {cfg.n_frames} frames, Mixed-N {cfg.mode} N={cfg.n}")
        parts.append(f"vocoder diffwave {cfg.vocoder_steps} steps ({sizes('diffwave', cfg.vocoder_config)})")
        parts += [f"{kind} {cfg.gen_steps} steps ({sizes(kind, cfg.generator_config.get(kind, {}))})"
                  for kind in cfg.kinds if kind != "diffwave"]
    return "; ".join(parts)


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> dict[str, Any]:
    """Run every condition for every seed; writes OUT/experiment.json and OUT/comparison.md, returns the summary.

    With ``progress`` (the default) every size is printed on stderr first, then one line per stage with
    the time elapsed and left, and each generator fit shows its bar; the classifier's epochs and the
    vocoder's sampling always show theirs (``train/progress.py``; ``TQDM_DISABLE=1`` turns bars off).
    """
    unknown = [k for k in cfg.kinds if k not in (*MEL_KINDS, "diffwave")]
    if unknown:
        raise DataError(f"unknown generator kind(s) {unknown}; choose from {', '.join((*MEL_KINDS, 'diffwave'))}")
    plan_text = describe(cfg)  # also refuses a bad generator configuration before any training
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(stage_count(cfg), "experiment", enabled=progress)
    if progress:
        print(f"experiment: {plan_text}", file=sys.stderr, flush=True)
    with torch_threads(cfg.threads):
        results, runs = _run_conditions(cfg, out, stages, progress)
    stages.finish()
    summary = summarize(results)
    table = comparison_table(summary)
    record = {"config": dataclasses.asdict(cfg), "summary": summary, "per_seed": results, "runs": runs}
    atomic_write_text(out / "experiment.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", table)
    return record


def _run_conditions(cfg: ExperimentConfig, out: Path, stages: Stages, progress: bool
                    ) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[str]]]:
    """Every condition of every seed: (test metrics, run directories) per condition."""
    results: dict[str, list[dict[str, float]]] = {"baseline": []}
    runs: dict[str, list[str]] = {"baseline": []}
    for seed in cfg.seeds:
        seed_dir = out / f"seed-{seed}"
        members = []
        baseline = seed_dir / "baseline"
        stages.stage(f"seed {seed}: train the baseline ({cfg.epochs} epoch(s))")
        results["baseline"].append(_test_summary(_train(cfg, baseline, seed).get("test")))
        runs["baseline"].append(str(baseline))
        members.append(baseline)
        if cfg.kinds:
            stages.stage(f"seed {seed}: fit the diffwave vocoder ({cfg.vocoder_steps} steps)")
            sets = load_melsets(cfg.data, cfg.n_mels, cfg.n_frames, with_audio=True, val_fraction=cfg.val_fraction,
                                seed=seed)
            train_set = sets["train"]
            del sets  # only the training cycles feed the generators
            vocoder = create("diffwave", spec=train_set.spec, n_mels=cfg.n_mels, n_frames=cfg.n_frames, seed=seed,
                             **cfg.vocoder_config).to(cfg.device)
            vocoder.fit(train_set, classes=cfg.gen_classes, steps=cfg.vocoder_steps,
                        checkpoint=seed_dir / "generators" / "diffwave.pt", progress=progress)
            # Only classes the generators saw can be sampled (a class with no training cycle is left out).
            plan = plan_counts(train_set.class_counts(), cfg.n, cfg.mode, classes=vocoder.classes)
            for kind in cfg.kinds:
                if kind == "diffwave":
                    generator = vocoder
                else:
                    stages.stage(f"seed {seed}: fit {kind} ({cfg.gen_steps} steps)")
                    generator = create(kind, spec=train_set.spec, n_mels=cfg.n_mels, n_frames=cfg.n_frames, seed=seed,
                                       **cfg.generator_config.get(kind, {})).to(cfg.device)
                    generator.fit(train_set, classes=cfg.gen_classes, steps=cfg.gen_steps,
                                  checkpoint=seed_dir / "generators" / f"{kind}.pt", progress=progress)
                stages.stage(f"seed {seed}: synthesise {sum(plan.values())} {kind} cycles {json.dumps(plan)}")
                mixed = write_mixed_dataset(seed_dir / "synthetic" / kind, generator, plan, vocoder=vocoder,
                                            source=train_set, seed=seed, overwrite=True)
                condition = f"{kind}+aft" if cfg.aft else kind
                run_dir = seed_dir / condition
                stages.stage(f"seed {seed}: train {condition} ({cfg.epochs} epoch(s))")
                results.setdefault(condition, []).append(_test_summary(_train(cfg, run_dir, seed, [str(mixed)]).get("test")))
                runs.setdefault(condition, []).append(str(run_dir))
                members.append(run_dir)
        if cfg.ensemble and len(members) > 1:
            stages.stage(f"seed {seed}: evaluate the ensemble of {len(members)} runs")
            metrics = evaluate_ensemble(members, seed_dir / "ensemble", cfg.data, cfg.val_fraction, seed)
            results.setdefault("ensemble", []).append(_test_summary(metrics))
            runs.setdefault("ensemble", []).append(str(seed_dir / "ensemble"))
    return results, runs
