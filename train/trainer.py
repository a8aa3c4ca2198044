"""Training of the AST classifier: build the data, model and teacher of a ``RunConfig``, run a ``Learner``.

SAM / ASAM / AdamW, inverse-frequency sampling, label smoothing, cosine schedule with warm-up,
weight EMA, AMP (bf16/fp16), adapters/LoRA on a frozen backbone, knowledge distillation,
adversarial fine-tuning against synthetic data, torchrun DDP, and resumable checkpoints.
Model selection (best epoch, early stopping) uses the patient-held-out VALIDATION split of the
train patients only; the test split is evaluated once, on the selected checkpoint.
The configuration is one nested ``RunConfig`` (train/run_config.py); the loop is
``stethoedge.train.learner.Learner``. ``TrainConfig`` is the flat form of the first version, still accepted.

``train(config)`` writes a run directory::

    RUN/config.json        everything needed to re-run: "run" (the RunConfig), model config, feature spec, labels
    RUN/splits.json        data root, label set and the recording stems of train / val / test
    RUN/checkpoint.pt      best epoch by validation Score: a plain AST (adapters merged), its label set
    RUN/adapter_delta.pt   adapter/LoRA weights only (with --adapter), re-appliable to the backbone
    RUN/state.pt           resumable state (model, optimizer, scheduler, EMA, RNG, position)
    RUN/metrics.json       validation and test metrics of that checkpoint, and the per-epoch history
    RUN/curves.csv, RUN/curves.png, RUN/confusion_val.png, RUN/confusion_test.png
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.outputs import atomic_write_text
from stethoedge.train import distributed
from stethoedge.train.adapters import add_adapters, backbone_fingerprint
from stethoedge.train.dataset import (cached_fbank, load_synthetic, load_windows, normalization_stats_from,
                                      normalize_features, split_recordings)
from stethoedge.train.domain import REAL, SYNTHETIC, DomainHead
from stethoedge.train.learner import (LossFn, Learner, RunData, Teacher, Trainee, adapter_config,  # noqa: F401
                                      autocast, build_optimizer, class_weights, cosine_with_warmup, epoch_order,
                                      make_loss, predict, train_step)
from stethoedge.train.model import AST, count_parameters, preset_config
from stethoedge.train.options import from_options
from stethoedge.train.run_config import RunConfig

log = logging.getLogger("stethoedge.train")


@dataclass
class TrainConfig:
    """The flat hyper-parameters of the first version (``RunConfig.from_any`` maps them; defaults: the CPU demo).

    Kept for existing callers and recipes: ``train()`` accepts it and converts it to a ``RunConfig``.
    """

    data: str
    out: str
    preset: str = "nano"
    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    optimizer: str = "sam"  # sam | asam | adamw
    rho: float = 0.05
    weighted_sampler: bool = True
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    val_fraction: float = 0.25
    seed: int = 0
    threads: int | None = None
    # model shape overrides on top of the preset (e.g. the edge student: fewer layers, stride 16)
    depth: int | None = None
    fstride: int | None = None
    tstride: int | None = None
    drop_path: float = 0.0
    init: str | None = None  # pretrained weights: Hugging Face AST directory or original AST .pth
    # regularisation / schedule
    ema_decay: float = 0.0  # 0 = off; evaluation and checkpoints use the EMA weights when on
    early_stopping: int = 0  # patience in epochs without a better validation Score; 0 = off
    amp: str = "none"  # none | bf16 | fp16
    # parameter-efficient fine-tuning
    adapter: str = "none"  # none | bottleneck | lora
    adapter_reduction: int = 16
    adapter_where: str = "both"
    lora_rank: int = 8
    # distillation
    distill_from: str | None = None
    distill_temperature: float = 4.0
    distill_alpha: float = 0.5
    # synthetic data and adversarial fine-tuning
    synthetic: list[str] = field(default_factory=list)
    aft: bool = False
    aft_lambda: float = 0.2
    augment: str | None = None  # policy name from stethoedge.train.augment
    # infrastructure
    checkpoint_every: int = 0  # steps between resumable state saves (0: end of each epoch only)
    resume: bool = True  # continue from RUN/state.pt when it exists
    stop_after_steps: int | None = None  # stop (state saved) after this many steps: interruption tests
    cache_dir: str | None = None  # on-disk cache of fbank features
    device: str | None = None  # default: cuda when available, else cpu

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict, rejecting unknown keys with a clear message."""
        return from_options(cls, values, "training option")

    def to_run_config(self) -> RunConfig:
        """The nested RunConfig of these flat settings."""
        return RunConfig.from_any(dataclasses.asdict(self))


def make_loader(features: torch.Tensor, labels: np.ndarray, batch_size: int, weighted: bool, seed: int,
                epoch: int = 0) -> DataLoader:
    """A DataLoader over one epoch in the trainer's order (for inspection and external use)."""
    order = epoch_order(labels, weighted, seed, epoch)
    dataset = TensorDataset(features[order], torch.from_numpy(labels)[order])
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def _augment_fn(name: str | None, seed: int, spec: FeatureSpec) -> Callable[..., torch.Tensor] | None:
    """The named policy of stethoedge.train.augment, applied to batches of normalised features."""
    if not name:
        return None
    try:
        from stethoedge.train.augment import get_policy
    except ImportError as exc:
        raise DataError(f"--augment {name}: the augmentation module is not available ({exc})") from None
    return get_policy(name, seed=seed, spec=spec)


def build_data(cfg: RunConfig) -> tuple[RunData, dict[str, list[str]]]:
    """Split, load, compute and normalise the features of a run; also the stems of each split."""
    d, spec = cfg.data, cfg.data.feature_spec
    splits = split_recordings(d.root, d.val_fraction, cfg.seed, d.labels)
    windows = {name: load_windows(recs, spec, desc=f"loading {name}") for name, recs in splits.items()}
    if len(windows["train"]) == 0 or len(windows["val"]) == 0:
        raise DataError(f"{d.root}: need cycles in both train ({len(windows['train'])}) and validation "
                        f"({len(windows['val'])}); add patients or lower --val-fraction")
    synthetic = load_synthetic(d.synthetic, spec, d.labels) if d.synthetic else None
    raw = {name: cached_fbank(w.audio, spec, d.cache_dir) for name, w in windows.items()}
    spec = spec.with_normalization(*normalization_stats_from(raw["train"], seed=cfg.seed))
    feats = {name: normalize_features(f, spec) for name, f in raw.items()}
    train_x, train_y = feats["train"], windows["train"].labels
    train_d = np.full(len(train_y), REAL, np.int64)
    counts = {name: np.bincount(w.labels, minlength=len(d.labels)).tolist() for name, w in windows.items()}
    if synthetic is not None and len(synthetic):
        syn_x = normalize_features(cached_fbank(synthetic.audio, spec, d.cache_dir), spec)
        train_x = torch.cat([train_x, syn_x])
        train_y = np.concatenate([train_y, synthetic.labels])
        train_d = np.concatenate([train_d, np.full(len(synthetic), SYNTHETIC, np.int64)])
    if synthetic is not None:
        counts["synthetic (train only)"] = np.bincount(synthetic.labels, minlength=len(d.labels)).tolist()
    data = RunData(spec, d.labels, train_x, train_y, train_d, {k: feats[k] for k in ("val", "test")},
                   {k: windows[k].labels for k in ("val", "test")}, counts)
    return data, {name: sorted({r.stem for r in recs}) for name, recs in splits.items()}


def build_model(cfg: RunConfig, spec: FeatureSpec) -> tuple[AST, dict[str, Any] | None]:
    """The AST of ``cfg.model`` with ``len(cfg.data.labels)`` outputs (pretrained when ``model.init``)."""
    m = cfg.model
    overrides = {k: getattr(m, k) for k in ("depth", "fstride", "tstride") if getattr(m, k) is not None}
    model_cfg = preset_config(m.preset, n_frames=spec.num_frames, n_mels=spec.n_mels, n_classes=len(cfg.data.labels),
                              drop_path=m.drop_path, **overrides)
    if not m.init:
        return AST(model_cfg), None
    from stethoedge.train.pretrained import load_pretrained

    model, report = load_pretrained(m.init, model_cfg)
    print(f"pretrained init from {m.init}: {report.summary()}")
    return model, {"source": m.init, "mapped": len(report.mapped), "unused": report.unused,
                   "head_reinitialised": report.head_reinitialised}


def build_trainee(cfg: RunConfig, spec: FeatureSpec, device: str) -> tuple[Trainee, dict[str, Any]]:
    """Model with its adapters and (under AFT) domain head, on ``device``; parameter counts and init info."""
    model, init_info = build_model(cfg, spec)
    n_params = count_parameters(model)
    fingerprint = backbone_fingerprint(model) if cfg.adapter.kind != "none" else None
    add_adapters(model, adapter_config(cfg))
    trainee = Trainee(model, DomainHead(model.cfg.dim) if cfg.aft.enabled else None).to(device)
    info = {"parameters": n_params, "trainable_parameters": count_parameters(model, trainable_only=True),
            "pretrained": init_info, "fingerprint": fingerprint}
    return trainee, info


def write_run_files(cfg: RunConfig, data: RunData, stems: dict[str, list[str]], model: AST, world: int) -> None:
    """RUN/config.json (the RunConfig and what it resolved to) and RUN/splits.json."""
    out = Path(cfg.out)
    run_info = {"run": cfg.to_dict(), "model": model.cfg.to_dict(), "feature_spec": data.spec.to_dict(),
                "labels": list(data.labels), "adapter": adapter_config(cfg).to_dict(), "world_size": world}
    atomic_write_text(out / "config.json", json.dumps(run_info, indent=2) + "\n")
    split_info = {"data": str(Path(cfg.data.root).resolve()), "labels": list(data.labels), "class_counts": data.counts,
                  "synthetic": [str(Path(s).resolve()) for s in cfg.data.synthetic], **stems}
    atomic_write_text(out / "splits.json", json.dumps(split_info, indent=2) + "\n")


def train(cfg: RunConfig | TrainConfig, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """Run training as configured; return the metrics dict also written to RUN/metrics.json.

    ``cfg``: a RunConfig (or the flat TrainConfig); ``spec`` replaces ``cfg.data.feature_spec`` when given.
    """
    started = time.time()
    cfg = RunConfig.coerce(cfg)
    if spec is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, feature_spec=spec))
    dist = distributed.init_from_env(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if dist.is_main:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if cfg.aft.enabled and not cfg.data.synthetic:
        raise DataError("--aft needs synthetic data (--synthetic DIR): the domain head separates real from synthetic")
    data, stems = build_data(cfg)
    trainee, info = build_trainee(cfg, data.spec, dist.device)
    fingerprint = info.pop("fingerprint")
    if dist.is_main:
        n, n_train = info["parameters"], info["trainable_parameters"]
        print(f"model {cfg.model.preset if not cfg.model.init else Path(cfg.model.init).name}: {n:,} parameters, "
              f"{n_train:,} trainable ({100.0 * n_train / n:.2f} %)"
              + (f" [{cfg.adapter.kind}]" if cfg.adapter.kind != "none" else ""))
        print(f"cycles per class ({', '.join(data.labels)}): " + "; ".join(f"{k} {v}" for k, v in data.counts.items()))
    teacher = Teacher.load(cfg.distill.teacher, data.spec, data.labels, dist.device) if cfg.distill.teacher else None
    augment = _augment_fn(cfg.data.augment, cfg.seed, data.spec)
    if dist.is_main:
        write_run_files(cfg, data, stems, trainee.model, dist.world)
    optimizer = build_optimizer([p for p in trainee.parameters() if p.requires_grad], cfg)
    learner = Learner(trainee, optimizer, data, cfg, teacher, dist, fingerprint, augment)
    learner.resume()
    if not learner.fit():
        return {"stopped_at_step": learner.global_step}
    return learner.final_metrics(started, info)


def train_seeds(cfg: RunConfig | TrainConfig, seeds: list[int]) -> dict[str, Any]:
    """One run per seed under RUN/seed-N; RUN/summary.json holds mean +- sd of val and test metrics."""
    from stethoedge.data.metrics import summarize_seeds

    cfg = RunConfig.coerce(cfg)
    out = Path(cfg.out)
    runs = {}
    for seed in seeds:
        run_cfg = copy.deepcopy(cfg)
        run_cfg.seed, run_cfg.out = seed, str(out / f"seed-{seed}")
        runs[seed] = train(run_cfg)
    summary = {"seeds": seeds, "runs": {str(s): str(out / f"seed-{s}") for s in seeds},
               "val": summarize_seeds([m["val"] for m in runs.values()]),
               "test": summarize_seeds([m["test"] for m in runs.values() if m.get("test")])}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
