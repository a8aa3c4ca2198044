"""Training loop for the AST classifier: SAM or AdamW, weighted sampling, ICBHI metrics per epoch.

``train(config)`` writes a run directory::

    RUN/config.json      everything needed to re-run (train config, model config, feature spec)
    RUN/splits.json      data root and the recording stems of train / val / test
    RUN/checkpoint.pt    best epoch by validation Score (never chosen on test)
    RUN/metrics.json     validation and test metrics of that checkpoint, and the per-epoch history
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler
from tqdm import tqdm

from stethoedge.runtime.bundle import atomic_write_text
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.labels import CLASSES
from stethoedge.train.checkpoint import load_checkpoint, save_checkpoint
from stethoedge.train.dataset import fbank_batches, load_windows, normalization_stats, split_recordings
from stethoedge.train.metrics import evaluate
from stethoedge.train.model import AST, count_parameters, preset_config
from stethoedge.train.sam import SAM

log = logging.getLogger("stethoedge.train")


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (defaults: the CPU demo)."""

    data: str
    out: str
    preset: str = "tiny"
    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    optimizer: str = "sam"  # "sam" or "adamw"
    rho: float = 0.05
    weighted_sampler: bool = True
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    val_fraction: float = 0.25
    seed: int = 0
    threads: int | None = None


def class_weights(labels: np.ndarray, n_classes: int = len(CLASSES)) -> np.ndarray:
    """Per-sample weights proportional to the inverse frequency of the sample's class."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return inv[labels]


def make_loader(features: torch.Tensor, labels: np.ndarray, batch_size: int, weighted: bool, seed: int) -> DataLoader:
    """Training loader: inverse-frequency WeightedRandomSampler, or a seeded shuffle."""
    dataset = TensorDataset(features, torch.from_numpy(labels))
    generator = torch.Generator().manual_seed(seed)
    if weighted:
        sampler = WeightedRandomSampler(torch.from_numpy(class_weights(labels)), len(labels), replacement=True,
                                        generator=generator)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def predict(model: nn.Module, features: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Logits (n, classes) in eval mode."""
    model.eval()
    out = [model(features[i : i + batch_size]) for i in range(0, features.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(CLASSES)), np.float32)


def _train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: TrainConfig, epoch: int) -> float:
    model.train()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    total, n = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False, disable=None)
    for x, y in bar:
        loss = loss_fn(model(x), y)
        loss.backward()
        if isinstance(optimizer, SAM):
            optimizer.first_step(zero_grad=True)
            loss_fn(model(x), y).backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.second_step(zero_grad=True)
        else:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad()
        scheduler.step()
        total += float(loss.detach()) * len(y)
        n += len(y)
        bar.set_postfix(loss=f"{total / n:.3f}")
    return total / max(1, n)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SAM around AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sam":
        return SAM(params, torch.optim.AdamW, rho=cfg.rho, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sam or adamw)")


def train(cfg: TrainConfig, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """Run training as configured; return the metrics dict also written to RUN/metrics.json."""
    started = time.time()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = spec or FeatureSpec()

    splits = split_recordings(cfg.data, cfg.val_fraction, cfg.seed)
    windows = {name: load_windows(recs, spec, desc=f"loading {name}") for name, recs in splits.items()}
    if len(windows["train"]) == 0 or len(windows["val"]) == 0:
        raise DataError(f"{cfg.data}: need cycles in both train ({len(windows['train'])}) and validation "
                        f"({len(windows['val'])}); add patients or lower --val-fraction")
    spec = spec.with_normalization(*normalization_stats(windows["train"].audio, spec, seed=cfg.seed))
    feats = {name: fbank_batches(w.audio, spec) for name, w in windows.items()}

    model_cfg = preset_config(cfg.preset, n_frames=spec.num_frames, n_mels=spec.n_mels, n_classes=len(CLASSES))
    model = AST(model_cfg)
    n_params = count_parameters(model)
    n_train = count_parameters(model, trainable_only=True)
    print(f"model {cfg.preset}: {n_params:,} parameters, {n_train:,} trainable ({100.0 * n_train / n_params:.1f} %)")
    counts = {name: np.bincount(w.labels, minlength=len(CLASSES)).tolist() for name, w in windows.items()}
    print("cycles per class (normal, crackle, wheeze, both): " + "; ".join(f"{k} {v}" for k, v in counts.items()))

    run_info = {"train": asdict(cfg), "model": model_cfg.to_dict(), "feature_spec": spec.to_dict(), "labels": list(CLASSES)}
    atomic_write_text(out / "config.json", json.dumps(run_info, indent=2) + "\n")
    split_info = {"data": str(Path(cfg.data).resolve()), "class_counts": counts,
                  **{name: sorted({r.stem for r in recs}) for name, recs in splits.items()}}
    atomic_write_text(out / "splits.json", json.dumps(split_info, indent=2) + "\n")

    loader = make_loader(feats["train"], windows["train"].labels, cfg.batch_size, cfg.weighted_sampler, cfg.seed)
    optimizer = build_optimizer(model, cfg)
    total_steps = cfg.epochs * len(loader)
    warmup = int(cfg.warmup_epochs * len(loader))
    base = optimizer.base_optimizer if isinstance(optimizer, SAM) else optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(base, lambda s: cosine_with_warmup(s, total_steps, warmup))

    history, best = [], None
    for epoch in range(cfg.epochs):
        loss = _train_epoch(model, loader, optimizer, scheduler, cfg, epoch)
        val = evaluate(windows["val"].labels, predict(model, feats["val"]).argmax(1))
        history.append({"epoch": epoch + 1, "train_loss": loss, "val_score": val["score"], "val_macro_f1": val["macro_f1"]})
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f}  val Sp {val['specificity']:.3f} "
              f"Se {val['sensitivity']:.3f} Score {val['score']:.3f} macro-F1 {val['macro_f1']:.3f}")
        if best is None or val["score"] > best["val"]["score"]:
            best = {"epoch": epoch + 1, "val": val}
            save_checkpoint(out / "checkpoint.pt", model, model_cfg, spec, epoch=epoch + 1, val_metrics=val,
                            train_config=asdict(cfg))

    model = load_checkpoint(out / "checkpoint.pt").model
    test = evaluate(windows["test"].labels, predict(model, feats["test"]).argmax(1)) if len(windows["test"]) else None
    metrics = {"best_epoch": best["epoch"], "selected_on": "validation (patient-held-out from train)",
               "val": best["val"], "test": test, "history": history, "parameters": n_params,
               "train_seconds": time.time() - started}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
