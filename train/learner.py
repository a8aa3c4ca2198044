"""``Learner``: the training loop of one run, split the way lmnt-com/diffwave splits its learner.

Everything it needs is built before it (``stethoedge.train.trainer.train`` does that): the data
(``RunData``: normalised features and labels of the splits), the model wrapped with its optional
domain head (``Trainee``), the optimizer, the optional distillation ``Teacher`` and the
``RunConfig``. The Learner owns the schedule, EMA, AMP scaler, loss and augmentation, and:

    train_epoch(epoch)   one pass over the training set (resumes mid-epoch); the mean loss, or None when stopped
    evaluate(split)      metrics of the evaluation model (EMA weights when on) on "val" or "test"
    state_dict()         everything a resumed run needs (model, optimizer, scheduler, EMA, scaler, RNG, position)
    load_state_dict(s)   the reverse; ``resume()`` reads RUN/state.pt when the settings match
    fit()                the epoch loop: selection on validation, checkpoint, curves, early stopping
    final_metrics()      test metrics of the selected checkpoint, the distillation summary -> metrics.json
"""
from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from stethoedge.data.metrics import evaluate, softmax
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.outputs import atomic_write_text, output_path
from stethoedge.train import distributed
from stethoedge.train.adapters import AdapterConfig, merge_adapters, save_delta
from stethoedge.train.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from stethoedge.train.distill import distillation_loss
from stethoedge.train.domain import DomainHead, aft_loss
from stethoedge.train.ema import make_ema
from stethoedge.train.model import AST, count_parameters, gflops_per_window
from stethoedge.train.progress import progress_bar
from stethoedge.train.run_config import RunConfig
from stethoedge.train.sam import SAM, optimizer_step

log = logging.getLogger("stethoedge.train")

#: Run-level settings a resumed run may change (where it writes, how often it saves, the machine).
NOT_RESUME_RELEVANT = ("resume", "stop_after_steps", "checkpoint_every", "threads", "cache_dir", "device", "out")


@dataclass
class RunData:
    """The examples of one run, built before the Learner: normalised features and label indices."""

    spec: FeatureSpec  # with the training set's normalisation statistics
    labels: tuple[str, ...]  # the label set; label index k is labels[k]
    train_x: torch.Tensor
    train_y: np.ndarray
    train_domain: np.ndarray  # REAL / SYNTHETIC per training example
    features: dict[str, torch.Tensor]  # "val", "test"
    targets: dict[str, np.ndarray]  # "val", "test"
    counts: dict[str, list[int]] = field(default_factory=dict)  # examples per class and split (splits.json)


@dataclass
class Teacher:
    """A frozen teacher run, as a function of the student's normalised input (re-normalised to its own stats)."""

    checkpoint: LoadedCheckpoint
    scale: float
    shift: float

    @classmethod
    def load(cls, run: str, spec: FeatureSpec, labels: tuple[str, ...], device: str) -> "Teacher":
        ckpt = load_checkpoint(run)
        if ckpt.spec.input_shape != spec.input_shape:
            raise DataError(f"{run}: teacher input {ckpt.spec.input_shape} differs from {spec.input_shape}")
        if tuple(ckpt.labels) != tuple(labels):
            raise DataError(f"{run}: teacher labels {list(ckpt.labels)} differ from the student's {list(labels)}")
        ckpt.model.to(device).eval()
        for p in ckpt.model.parameters():
            p.requires_grad = False
        return cls(ckpt, spec.norm_std / ckpt.spec.norm_std,
                   (spec.norm_mean - ckpt.spec.norm_mean) / (2.0 * ckpt.spec.norm_std))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The student's normalised features in the teacher's normalisation."""
        return x * self.scale + self.shift

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.checkpoint.model(self.inputs(x))


class Trainee(nn.Module):
    """What DDP wraps: the classifier plus the optional domain head; returns (logits, domain logits)."""

    def __init__(self, model: AST, domain_head: DomainHead | None) -> None:
        super().__init__()
        self.model = model
        self.domain_head = domain_head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb = self.model.embed(x)
        logits = self.model.head(emb)
        return logits, (self.domain_head(emb) if self.domain_head is not None else None)


def class_weights(labels: np.ndarray, n_classes: int = 0) -> np.ndarray:
    """Per-sample weights proportional to the inverse frequency of the sample's class."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return inv[labels]


def epoch_order(labels: np.ndarray, weighted: bool, seed: int, epoch: int) -> torch.Tensor:
    """Sample indices of one epoch: inverse-frequency draws with replacement, or a permutation.

    A pure function of (seed, epoch), so a resumed run and every DDP rank recompute the same order.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    n = len(labels)
    if weighted:
        return torch.multinomial(torch.from_numpy(class_weights(labels)), n, replacement=True, generator=generator)
    return torch.randperm(n, generator=generator)


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def predict(model: nn.Module, features: torch.Tensor, batch_size: int = 64, device: str = "cpu",
            n_classes: int = 0) -> np.ndarray:
    """Logits (n, classes) in eval mode."""
    model.eval()
    out = [model(features[i : i + batch_size].to(device)).float().cpu() for i in range(0, features.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, n_classes), np.float32)


def build_optimizer(params: list[nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    """AdamW, or SAM / adaptive SAM around AdamW (``cfg``: a RunConfig, its OptimConfig or a flat TrainConfig)."""
    cfg = cfg.optim if isinstance(cfg, RunConfig) else cfg
    if cfg.optimizer in ("sam", "asam"):
        return SAM(params, torch.optim.AdamW, rho=cfg.rho, adaptive=cfg.optimizer == "asam", lr=cfg.lr,
                   weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise DataError(f"unknown optimizer {cfg.optimizer!r} (sam, asam or adamw)")


def autocast(device: str, amp: str) -> Any:
    """torch.autocast for the configured precision (a disabled context for 'none')."""
    if amp not in ("none", "bf16", "fp16"):
        raise DataError(f"unknown --amp {amp!r} (none, bf16, fp16)")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=amp != "none")


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(cfg: Any, teacher: Callable[[torch.Tensor], torch.Tensor] | None) -> LossFn:
    """Loss of one batch: CE (or distillation) + lambda * domain loss under AFT (``cfg``: RunConfig or TrainConfig)."""
    cfg = RunConfig.coerce(cfg)
    amp, smoothing = cfg.optim.amp, cfg.optim.label_smoothing

    def loss_fn(trainee: nn.Module, x: torch.Tensor, y: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        with autocast(str(x.device), amp):
            logits, domain_logits = trainee(x)
        logits = logits.float()
        if teacher is not None:
            with torch.no_grad():
                target = teacher(x).float()
            loss = distillation_loss(logits, target, y, cfg.distill.temperature, cfg.distill.alpha, smoothing)
        else:
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=smoothing)
        if domain_logits is not None:
            loss = aft_loss(loss, domain_logits.float(), domain, cfg.aft.weight)
        return loss

    return loss_fn


def train_step(trainee: nn.Module, batch: tuple[torch.Tensor, ...], optimizer: torch.optim.Optimizer, loss_fn: LossFn,
               grad_clip: float, scaler: torch.amp.GradScaler | None = None) -> float:
    """One optimisation step (two forward/backward passes for SAM); returns the loss at w.

    Clipping acts on the gradient the base optimizer uses (at w + e(w) for SAM); with fp16 the
    gradients are unscaled before the SAM perturbation and before clipping.
    """
    x, y, domain = batch
    params = [p for p in trainee.parameters() if p.requires_grad]
    trainee.train()
    return float(optimizer_step(optimizer, lambda: loss_fn(trainee, x, y, domain), params, grad_clip, scaler))


def rng_state() -> dict[str, Any]:
    """Every RNG a step draws from (torch, numpy, python, CUDA)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()``."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_key(cfg: RunConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the interrupted one (flat, as state.pt has always stored them)."""
    return {k: v for k, v in cfg.flat().items() if k not in NOT_RESUME_RELEVANT}


def adapter_config(cfg: RunConfig) -> AdapterConfig:
    """The adapters.AdapterConfig of a run's adapter settings."""
    a = cfg.adapter
    return AdapterConfig(kind=a.kind, reduction=a.reduction, where=a.where, rank=a.rank, alpha=2.0 * a.rank)


class Learner:
    """Trains one model on prepared data; see the module docstring."""

    def __init__(self, trainee: Trainee, optimizer: torch.optim.Optimizer, data: RunData, cfg: RunConfig,
                 teacher: Teacher | None = None, dist: Any = None, fingerprint: str | None = None,
                 augment: Callable[..., torch.Tensor] | None = None) -> None:
        self.cfg, self.data, self.teacher, self.augment, self.fingerprint = cfg, data, teacher, augment, fingerprint
        self.dist = dist or distributed.init_from_env(cfg.device)
        self.device = self.dist.device
        self.main = self.dist.is_main
        self.out = Path(cfg.out)
        self.trainee, self.model, self.optimizer = trainee, trainee.model, optimizer
        self.wrapped = distributed.wrap(trainee, self.dist)
        self.loss_fn = make_loss(cfg, teacher)
        self.steps_per_epoch = math.ceil(math.ceil(len(data.train_y) / self.dist.world) / cfg.optim.batch_size)
        total, warmup = cfg.epochs * self.steps_per_epoch, int(cfg.optim.warmup_epochs * self.steps_per_epoch)
        base = optimizer.base_optimizer if isinstance(optimizer, SAM) else optimizer
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(base, lambda s: cosine_with_warmup(s, total, warmup))
        self.ema = make_ema(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler(torch.device(self.device).type) if cfg.optim.amp == "fp16" else None
        self.state_path = self.out / "state.pt"
        self.epoch, self.step_in_epoch, self.global_step, self.stale = 0, 0, 0, 0
        self.partial: tuple[float, int] = (0.0, 0)  # (loss sum, examples) of the current epoch so far
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._labels_t, self._domain_t = torch.from_numpy(data.train_y), torch.from_numpy(data.train_domain)

    def say(self, *args: Any) -> None:
        if self.main:
            print(*args)

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluated and checkpointed: the EMA copy when on."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Resumable state (the layout RUN/state.pt has always had)."""
        return {"trainee": self.trainee.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "scaler": self.scaler.state_dict() if self.scaler else None, "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "global_step": self.global_step, "history": self.history,
                "best": self.best, "stale": self.stale, "partial": self.partial, "rng": rng_state(),
                "config": resume_key(self.cfg)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` output; a state of other settings is a DataError."""
        if state.get("config") != resume_key(self.cfg):
            raise DataError(f"{self.state_path} was written by a run with other settings; use a new --out or --no-resume")
        self.trainee.load_state_dict(state["trainee"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.history, self.best, self.stale = state["history"], state["best"], state["stale"]
        self.partial = tuple(state.get("partial", (0.0, 0)))
        set_rng_state(state["rng"])

    def save_state(self) -> None:
        if self.main:
            with output_path(self.state_path) as tmp:
                torch.save(self.state_dict(), tmp)

    def resume(self) -> bool:
        """Load RUN/state.pt when resuming is on and it exists."""
        if not (self.cfg.resume and self.state_path.is_file()):
            return False
        self.load_state_dict(torch.load(self.state_path, map_location=self.device, weights_only=False))
        self.say(f"resumed from {self.state_path}: epoch {self.epoch + 1}, step {self.step_in_epoch} "
                 f"of {self.steps_per_epoch}")
        return True

    # ------------------------------------------------------------------ training
    def train_epoch(self) -> float | None:
        """One pass from the current position; the mean training loss, or None when ``stop_after_steps`` hit."""
        cfg, data = self.cfg, self.data
        order = distributed.shard(epoch_order(data.train_y, cfg.data.weighted_sampler, cfg.seed, self.epoch), self.dist)
        batches = order.split(cfg.optim.batch_size)
        first = self.step_in_epoch
        total, n = self.partial if first else (0.0, 0)
        for step in progress_bar(range(first, len(batches)), total=len(batches), initial=first,
                                 desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False, disable=not self.main):
            idx = batches[step]
            x = data.train_x[idx].to(self.device)
            y, d = self._labels_t[idx].to(self.device), self._domain_t[idx].to(self.device)
            if self.augment is not None:
                if hasattr(self.augment, "reset"):  # a stream per step: a resumed run draws the same augmentations
                    self.augment.reset(cfg.seed * 1_000_003 + self.global_step)
                x = self.augment(x, y)
            loss = train_step(self.wrapped, (x, y, d), self.optimizer, self.loss_fn, cfg.optim.grad_clip, self.scaler)
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.global_step += 1
            total, n = total + loss * len(idx), n + len(idx)
            done = cfg.stop_after_steps is not None and self.global_step >= cfg.stop_after_steps
            if (cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0) or done:
                self.step_in_epoch, self.partial = step + 1, (total, n)
                self.save_state()
            if done:
                return None
        self.step_in_epoch, self.partial = 0, (0.0, 0)
        return total / max(1, n)

    def evaluate(self, split: str, model: nn.Module | None = None, inputs: Callable | None = None) -> dict[str, Any]:
        """Metrics (over the run's label set) of ``model`` (default the evaluation model) on ``split``."""
        model = model if model is not None else self.eval_model
        feats, labels = self.data.features[split], self.data.targets[split]
        feats = inputs(feats) if inputs is not None else feats
        device = self.device if model is self.eval_model else str(next(model.parameters()).device)
        logits = predict(model, feats, device=device, n_classes=len(self.data.labels))
        metrics = evaluate(labels, logits.argmax(1), softmax(logits), labels=self.data.labels)
        if len(labels):
            metrics["loss"] = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
        return metrics

    def fit(self) -> bool:
        """Epochs from the current position; False when stopped early by ``stop_after_steps`` (state saved)."""
        cfg = self.cfg
        while self.epoch < cfg.epochs:
            train_loss = self.train_epoch()
            if train_loss is None:
                self.say(f"stopped after step {self.global_step} (state saved to {self.state_path}; run again to resume)")
                return False
            val = self.evaluate("val")
            self.history.append({"epoch": self.epoch + 1, "train_loss": train_loss,
                                 "val_loss": val.get("loss", float("nan")), "val_score": val["score"],
                                 "val_macro_f1": val["macro_f1"], "val_auroc": val["auroc"]["macro"],
                                 "lr": self.scheduler.get_last_lr()[0]})
            self.say(f"epoch {self.epoch + 1}/{cfg.epochs}: loss {train_loss:.4f}  val Sp {val['specificity']:.3f} "
                     f"Se {val['sensitivity']:.3f} Score {val['score']:.3f} macro-F1 {val['macro_f1']:.3f}")
            self.epoch += 1
            if self.best is None or val["score"] > self.best["val"]["score"]:
                self.best, self.stale = {"epoch": self.epoch, "val": val}, 0
                self.save_checkpoint(val)
            else:
                self.stale += 1
            if self.main:
                write_curves(self.history, self.out)
            self.save_state()
            if cfg.early_stopping and self.stale >= cfg.early_stopping:
                self.say(f"early stopping: no better validation Score for {self.stale} epochs")
                break
        return True

    def save_checkpoint(self, val: dict[str, Any]) -> None:
        """RUN/checkpoint.pt (a plain model: EMA weights when on, adapters merged) and the adapter delta."""
        if not self.main:
            return
        plain = merge_adapters(copy.deepcopy(self.eval_model).cpu()).eval()
        save_checkpoint(self.out / "checkpoint.pt", plain, self.model.cfg, self.data.spec, labels=self.data.labels,
                        epoch=self.epoch, val_metrics=val, run_config=self.cfg.to_dict())
        if self.cfg.adapter.kind != "none":
            save_delta(self.out / "adapter_delta.pt", self.eval_model, adapter_config(self.cfg), self.fingerprint)

    # ------------------------------------------------------------------ results
    def final_metrics(self, started: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Test metrics of the selected checkpoint (and of the teacher): RUN/metrics.json and the plots."""
        if not self.main:
            return {}
        assert self.best is not None
        selected = load_checkpoint(self.out / "checkpoint.pt").model.to(self.device)
        has_test = len(self.data.targets["test"]) > 0
        test = self.evaluate("test", selected) if has_test else None
        metrics = {"best_epoch": self.best["epoch"], "selected_on": "validation (patient-held-out from train)",
                   "labels": list(self.data.labels), "val": self.best["val"], "test": test, "history": self.history,
                   "parameters": count_parameters(self.model),
                   "trainable_parameters": count_parameters(self.model, trainable_only=True),
                   "gflops_per_window": gflops_per_window(selected.cpu()), "train_seconds": time.time() - started,
                   "world_size": self.dist.world, **(extra or {})}
        if self.teacher is not None:
            metrics["distillation"] = self._distillation_summary(metrics, test)
        atomic_write_text(self.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        write_reports(self.out, metrics, self.data.labels)
        return metrics

    def _distillation_summary(self, metrics: dict[str, Any], test: dict[str, Any] | None) -> dict[str, Any]:
        t_model = self.teacher.checkpoint.model.cpu()
        t_val = self.evaluate("val", t_model, self.teacher.inputs)
        t_test = self.evaluate("test", t_model, self.teacher.inputs) if test is not None else None
        return {"teacher": {"run": str(self.cfg.distill.teacher), "parameters": count_parameters(t_model),
                            "gflops_per_window": gflops_per_window(t_model), "val_score": t_val["score"],
                            "test_score": t_test["score"] if t_test else None},
                "student": {"parameters": metrics["parameters"], "gflops_per_window": metrics["gflops_per_window"],
                            "val_score": self.best["val"]["score"], "test_score": test["score"] if test else None}}


def write_curves(history: list[dict[str, Any]], out: Path) -> None:
    """RUN/curves.csv: one row per epoch."""
    buf = io.StringIO()
    keys = list(history[0]) if history else ["epoch"]
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out / "curves.csv", buf.getvalue())


def write_reports(out: Path, metrics: dict[str, Any], labels: tuple[str, ...]) -> None:
    """curves.png and the confusion matrices; a plotting failure never fails a finished run."""
    try:
        from stethoedge.train.plots import plot_confusion, plot_curves

        plot_curves(metrics["history"], out / "curves.png")
        for split in ("val", "test"):
            if metrics.get(split):
                plot_confusion(metrics[split]["confusion_matrix"], labels, out / f"confusion_{split}.png",
                               title=f"{split}: Score {metrics[split]['score']:.3f}")
    except Exception as exc:  # matplotlib missing or a backend problem: the run itself is complete
        log.warning("could not write plots: %s", exc)
