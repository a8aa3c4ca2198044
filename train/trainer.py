"""Training loop for the AST classifier.

SAM / ASAM / AdamW, inverse-frequency sampling, label smoothing, cosine schedule with warm-up,
weight EMA, AMP (bf16/fp16), adapters/LoRA on a frozen backbone, knowledge distillation,
adversarial fine-tuning against synthetic data, torchrun DDP, and resumable checkpoints.
Model selection (best epoch, early stopping) uses the patient-held-out VALIDATION split of the
train patients only; the test split is evaluated once, on the selected checkpoint.

``train(config)`` writes a run directory::

    RUN/config.json        everything needed to re-run (train config, model config, feature spec)
    RUN/splits.json        data root and the recording stems of train / val / test
    RUN/checkpoint.pt      best epoch by validation Score: a plain AST (adapters merged)
    RUN/adapter_delta.pt   adapter/LoRA weights only (with --adapter), re-appliable to the backbone
    RUN/state.pt           resumable state (model, optimizer, scheduler, EMA, RNG, position)
    RUN/metrics.json       validation and test metrics of that checkpoint, and the per-epoch history
    RUN/curves.csv, RUN/curves.png, RUN/confusion_val.png, RUN/confusion_test.png
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stethoedge.runtime.outputs import atomic_write_text, output_path
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.labels import CLASSES
from stethoedge.train import distributed
from stethoedge.train.adapters import AdapterConfig, add_adapters, backbone_fingerprint, merge_adapters, save_delta
from stethoedge.train.checkpoint import load_checkpoint, save_checkpoint
from stethoedge.train.dataset import (CycleWindows, cached_fbank, load_synthetic, load_windows, normalization_stats_from,
                                      normalize_features, split_recordings)
from stethoedge.train.distill import distillation_loss
from stethoedge.train.domain import REAL, SYNTHETIC, DomainHead, aft_loss
from stethoedge.train.ema import make_ema
from stethoedge.data.metrics import evaluate, softmax
from stethoedge.train.options import from_options
from stethoedge.train.model import AST, count_parameters, gflops_per_window, preset_config
from stethoedge.train.progress import progress_bar
from stethoedge.train.sam import SAM

log = logging.getLogger("stethoedge.train")


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (defaults: the CPU demo)."""

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


def class_weights(labels: np.ndarray, n_classes: int = len(CLASSES)) -> np.ndarray:
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


def make_loader(features: torch.Tensor, labels: np.ndarray, batch_size: int, weighted: bool, seed: int,
                epoch: int = 0) -> DataLoader:
    """A DataLoader over one epoch in the trainer's order (for inspection and external use)."""
    order = epoch_order(labels, weighted, seed, epoch)
    dataset = TensorDataset(features[order], torch.from_numpy(labels)[order])
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def predict(model: nn.Module, features: torch.Tensor, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Logits (n, classes) in eval mode."""
    model.eval()
    out = [model(features[i : i + batch_size].to(device)).float().cpu() for i in range(0, features.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(CLASSES)), np.float32)


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SAM / adaptive SAM around AdamW."""
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


def make_loss(cfg: TrainConfig, teacher: Callable[[torch.Tensor], torch.Tensor] | None) -> LossFn:
    """Loss of one batch: CE (or distillation) + lambda * domain loss under AFT."""

    def loss_fn(trainee: nn.Module, x: torch.Tensor, y: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        with autocast(str(x.device), cfg.amp):
            logits, domain_logits = trainee(x)
        logits = logits.float()
        if teacher is not None:
            with torch.no_grad():
                target = teacher(x).float()
            loss = distillation_loss(logits, target, y, cfg.distill_temperature, cfg.distill_alpha, cfg.label_smoothing)
        else:
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if domain_logits is not None:
            loss = aft_loss(loss, domain_logits.float(), domain, cfg.aft_lambda)
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
    loss = loss_fn(trainee, x, y, domain)
    if isinstance(optimizer, SAM):
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        optimizer.first_step(zero_grad=True)
        loss2 = loss_fn(trainee, x, y, domain)
        (scaler.scale(loss2) if scaler else loss2).backward()
        if scaler:
            scaler.unscale_(optimizer.base_optimizer)  # a second per-optimizer record for the second pass
        nn.utils.clip_grad_norm_(params, grad_clip)
        if scaler:
            optimizer.restore()
            scaler.step(optimizer.base_optimizer)
            scaler.update()
            optimizer.zero_grad()
        else:
            optimizer.second_step(zero_grad=True)
    else:
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad()
    return float(loss.detach())


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with output_path(path) as tmp:
        torch.save(obj, tmp)


_NOT_RESUME_RELEVANT = ("resume", "stop_after_steps", "checkpoint_every", "threads", "cache_dir", "device", "out")


def _resume_key(cfg: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the interrupted one."""
    return {k: v for k, v in asdict(cfg).items() if k not in _NOT_RESUME_RELEVANT}


def _augment_fn(name: str | None, seed: int, spec: FeatureSpec) -> Callable[..., torch.Tensor] | None:
    """The named policy of stethoedge.train.augment, applied to batches of normalised features."""
    if not name:
        return None
    try:
        from stethoedge.train.augment import get_policy
    except ImportError as exc:
        raise DataError(f"--augment {name}: the augmentation module is not available ({exc})") from None
    return get_policy(name, seed=seed, spec=spec)


def _model_config(cfg: TrainConfig, spec: FeatureSpec) -> Any:
    overrides = {k: getattr(cfg, k) for k in ("depth", "fstride", "tstride") if getattr(cfg, k) is not None}
    return preset_config(cfg.preset, n_frames=spec.num_frames, n_mels=spec.n_mels, n_classes=len(CLASSES),
                         drop_path=cfg.drop_path, **overrides)


def _build_model(cfg: TrainConfig, spec: FeatureSpec) -> tuple[AST, dict[str, Any] | None]:
    model_cfg = _model_config(cfg, spec)
    if not cfg.init:
        return AST(model_cfg), None
    from stethoedge.train.pretrained import load_pretrained

    model, report = load_pretrained(cfg.init, model_cfg)
    print(f"pretrained init from {cfg.init}: {report.summary()}")
    return model, {"source": cfg.init, "mapped": len(report.mapped), "unused": report.unused,
                   "head_reinitialised": report.head_reinitialised}


def _teacher(cfg: TrainConfig, spec: FeatureSpec, device: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], Any]:
    """The frozen teacher as a function of the student's normalised input (re-normalised to its own stats)."""
    ckpt = load_checkpoint(cfg.distill_from)
    if ckpt.spec.input_shape != spec.input_shape:
        raise DataError(f"{cfg.distill_from}: teacher input {ckpt.spec.input_shape} differs from {spec.input_shape}")
    teacher = ckpt.model.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad = False
    scale = spec.norm_std / ckpt.spec.norm_std
    shift = (spec.norm_mean - ckpt.spec.norm_mean) / (2.0 * ckpt.spec.norm_std)

    def run(x: torch.Tensor) -> torch.Tensor:
        return teacher(x * scale + shift)

    return run, ckpt


def _write_curves(history: list[dict[str, Any]], out: Path) -> None:
    buf = io.StringIO()
    keys = list(history[0]) if history else ["epoch"]
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out / "curves.csv", buf.getvalue())


def _evaluate_split(model: nn.Module, feats: torch.Tensor, labels: np.ndarray, device: str) -> dict[str, Any]:
    logits = predict(model, feats, device=device)
    probs = softmax(logits)
    metrics = evaluate(labels, logits.argmax(1), probs)
    if len(labels):
        metrics["loss"] = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    return metrics


def _export_model(model: AST, ema: Any | None) -> AST:
    """A plain AST with the weights to save: EMA if on, adapters merged."""
    source = ema.module if ema is not None else model
    plain = copy.deepcopy(source).cpu()
    return merge_adapters(plain).eval()


def train(cfg: TrainConfig, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """Run training as configured; return the metrics dict also written to RUN/metrics.json."""
    started = time.time()
    dist_info = distributed.init_from_env(cfg.device)
    device = dist_info.device
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    main = dist_info.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    say = print if main else (lambda *a, **k: None)
    spec = spec or FeatureSpec()
    if cfg.aft and not cfg.synthetic:
        raise DataError("--aft needs synthetic data (--synthetic DIR): the domain head separates real from synthetic")

    splits = split_recordings(cfg.data, cfg.val_fraction, cfg.seed)
    windows: dict[str, CycleWindows] = {name: load_windows(recs, spec, desc=f"loading {name}")
                                        for name, recs in splits.items()}
    if len(windows["train"]) == 0 or len(windows["val"]) == 0:
        raise DataError(f"{cfg.data}: need cycles in both train ({len(windows['train'])}) and validation "
                        f"({len(windows['val'])}); add patients or lower --val-fraction")
    synthetic = load_synthetic(cfg.synthetic, spec) if cfg.synthetic else None
    raw = {name: cached_fbank(w.audio, spec, cfg.cache_dir) for name, w in windows.items()}
    spec = spec.with_normalization(*normalization_stats_from(raw["train"], seed=cfg.seed))
    feats = {name: normalize_features(f, spec) for name, f in raw.items()}
    train_x, train_y = feats["train"], windows["train"].labels
    train_d = np.full(len(train_y), REAL, np.int64)
    if synthetic is not None and len(synthetic):
        syn_x = normalize_features(cached_fbank(synthetic.audio, spec, cfg.cache_dir), spec)
        train_x = torch.cat([train_x, syn_x])
        train_y = np.concatenate([train_y, synthetic.labels])
        train_d = np.concatenate([train_d, np.full(len(synthetic), SYNTHETIC, np.int64)])
    del raw

    model, init_info = _build_model(cfg, spec)
    model_cfg = model.cfg
    n_params = count_parameters(model)
    fingerprint = backbone_fingerprint(model) if cfg.adapter != "none" else None
    adapter_cfg = AdapterConfig(kind=cfg.adapter, reduction=cfg.adapter_reduction, where=cfg.adapter_where,
                                rank=cfg.lora_rank, alpha=2.0 * cfg.lora_rank)
    add_adapters(model, adapter_cfg)
    domain_head = DomainHead(model_cfg.dim) if cfg.aft else None
    trainee = Trainee(model, domain_head).to(device)
    n_train = count_parameters(model, trainable_only=True)
    say(f"model {cfg.preset if not cfg.init else Path(cfg.init).name}: {n_params:,} parameters, {n_train:,} trainable "
        f"({100.0 * n_train / n_params:.2f} %)" + (f" [{cfg.adapter}]" if cfg.adapter != "none" else ""))
    counts = {name: np.bincount(w.labels, minlength=len(CLASSES)).tolist() for name, w in windows.items()}
    if synthetic is not None:
        counts["synthetic (train only)"] = np.bincount(synthetic.labels, minlength=len(CLASSES)).tolist()
    say("cycles per class (normal, crackle, wheeze, both): " + "; ".join(f"{k} {v}" for k, v in counts.items()))

    teacher, teacher_ckpt = (_teacher(cfg, spec, device) if cfg.distill_from else (None, None))
    loss_fn = make_loss(cfg, teacher)
    augment = _augment_fn(cfg.augment, cfg.seed, spec)

    if main:
        run_info = {"train": asdict(cfg), "model": model_cfg.to_dict(), "feature_spec": spec.to_dict(),
                    "labels": list(CLASSES), "adapter": adapter_cfg.to_dict(), "world_size": dist_info.world}
        atomic_write_text(out / "config.json", json.dumps(run_info, indent=2) + "\n")
        split_info = {"data": str(Path(cfg.data).resolve()), "class_counts": counts,
                      "synthetic": [str(Path(s).resolve()) for s in cfg.synthetic],
                      **{name: sorted({r.stem for r in recs}) for name, recs in splits.items()}}
        atomic_write_text(out / "splits.json", json.dumps(split_info, indent=2) + "\n")

    wrapped = distributed.wrap(trainee, dist_info)
    optimizer = build_optimizer([p for p in trainee.parameters() if p.requires_grad], cfg)
    steps_per_epoch = math.ceil(math.ceil(len(train_y) / dist_info.world) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    base = optimizer.base_optimizer if isinstance(optimizer, SAM) else optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(base, lambda s: cosine_with_warmup(s, total_steps, warmup))
    ema = make_ema(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    scaler = torch.amp.GradScaler(torch.device(device).type) if cfg.amp == "fp16" else None

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start_epoch, start_step, global_step, stale = 0, 0, 0, 0
    resumed_partial: tuple[float, int] = (0.0, 0)
    state_path = out / "state.pt"
    if cfg.resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state.get("config") != _resume_key(cfg):
            raise DataError(f"{state_path} was written by a run with other settings; use a new --out or --no-resume")
        trainee.load_state_dict(state["trainee"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        history, best, stale = state["history"], state["best"], state["stale"]
        resumed_partial = tuple(state.get("partial", (0.0, 0)))
        _set_rng_state(state["rng"])
        say(f"resumed from {state_path}: epoch {start_epoch + 1}, step {start_step} of {steps_per_epoch}")

    def save_state(epoch: int, step_in_epoch: int, partial: tuple[float, int] = (0.0, 0)) -> None:
        if not main:
            return
        _atomic_torch_save({"trainee": trainee.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else None,
                            "scaler": scaler.state_dict() if scaler else None, "epoch": epoch,
                            "step_in_epoch": step_in_epoch, "global_step": global_step, "history": history,
                            "best": best, "stale": stale, "partial": partial, "rng": _rng_state(),
                            "config": _resume_key(cfg)}, state_path)

    eval_model = lambda: ema.module if ema is not None else model  # noqa: E731
    train_labels_t, train_domain_t = torch.from_numpy(train_y), torch.from_numpy(train_d)
    stopped = False
    for epoch in range(start_epoch, cfg.epochs):
        order = distributed.shard(epoch_order(train_y, cfg.weighted_sampler, cfg.seed, epoch), dist_info)
        batches = order.split(cfg.batch_size)
        first = start_step if epoch == start_epoch else 0
        total, n = resumed_partial if first else (0.0, 0)
        for step in progress_bar(range(first, len(batches)), total=len(batches), initial=first,
                                 desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not main):
            idx = batches[step]
            x = train_x[idx].to(device)
            y, d = train_labels_t[idx].to(device), train_domain_t[idx].to(device)
            if augment is not None:
                if hasattr(augment, "reset"):  # a stream per step: a resumed run draws the same augmentations
                    augment.reset(cfg.seed * 1_000_003 + global_step)
                x = augment(x, y)
            loss = train_step(wrapped, (x, y, d), optimizer, loss_fn, cfg.grad_clip, scaler)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            global_step += 1
            total, n = total + loss * len(idx), n + len(idx)
            done = cfg.stop_after_steps is not None and global_step >= cfg.stop_after_steps
            if (cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0) or done:
                save_state(epoch, step + 1, (total, n))
            if done:
                stopped = True
                break
        if stopped:
            say(f"stopped after step {global_step} (state saved to {state_path}; run again to resume)")
            return {"stopped_at_step": global_step}
        train_loss = total / max(1, n)
        val = _evaluate_split(eval_model(), feats["val"], windows["val"].labels, device)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val.get("loss", float("nan")),
                        "val_score": val["score"], "val_macro_f1": val["macro_f1"],
                        "val_auroc": val["auroc"]["macro"], "lr": scheduler.get_last_lr()[0]})
        say(f"epoch {epoch + 1}/{cfg.epochs}: loss {train_loss:.4f}  val Sp {val['specificity']:.3f} "
            f"Se {val['sensitivity']:.3f} Score {val['score']:.3f} macro-F1 {val['macro_f1']:.3f}")
        if best is None or val["score"] > best["val"]["score"]:
            best, stale = {"epoch": epoch + 1, "val": val}, 0
            if main:
                save_checkpoint(out / "checkpoint.pt", _export_model(model, ema), model_cfg, spec, epoch=epoch + 1,
                                val_metrics=val, train_config=asdict(cfg))
                if cfg.adapter != "none":
                    save_delta(out / "adapter_delta.pt", eval_model(), adapter_cfg, fingerprint)
        else:
            stale += 1
        if main:
            _write_curves(history, out)
        save_state(epoch + 1, 0)
        if cfg.early_stopping and stale >= cfg.early_stopping:
            say(f"early stopping: no better validation Score for {stale} epochs")
            break

    metrics: dict[str, Any] = {}
    if main:
        selected = load_checkpoint(out / "checkpoint.pt").model.to(device)
        test = (_evaluate_split(selected, feats["test"], windows["test"].labels, device)
                if len(windows["test"]) else None)
        metrics = {"best_epoch": best["epoch"], "selected_on": "validation (patient-held-out from train)",
                   "val": best["val"], "test": test, "history": history, "parameters": n_params,
                   "trainable_parameters": n_train, "gflops_per_window": gflops_per_window(selected.cpu()),
                   "train_seconds": time.time() - started, "world_size": dist_info.world, "pretrained": init_info}
        if teacher_ckpt is not None:
            t_model = teacher_ckpt.model.cpu()
            t_feats = {k: v * (spec.norm_std / teacher_ckpt.spec.norm_std)
                       + (spec.norm_mean - teacher_ckpt.spec.norm_mean) / (2.0 * teacher_ckpt.spec.norm_std)
                       for k, v in feats.items() if k in ("val", "test")}
            t_val = _evaluate_split(t_model, t_feats["val"], windows["val"].labels, "cpu")
            t_test = (_evaluate_split(t_model, t_feats["test"], windows["test"].labels, "cpu")
                      if len(windows["test"]) else None)
            metrics["distillation"] = {
                "teacher": {"run": str(cfg.distill_from), "parameters": count_parameters(t_model),
                            "gflops_per_window": gflops_per_window(t_model), "val_score": t_val["score"],
                            "test_score": t_test["score"] if t_test else None},
                "student": {"parameters": n_params, "gflops_per_window": metrics["gflops_per_window"],
                            "val_score": best["val"]["score"], "test_score": test["score"] if test else None},
            }
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        _write_reports(out, metrics)
    return metrics


def _write_reports(out: Path, metrics: dict[str, Any]) -> None:
    """curves.png and the confusion matrices; a plotting failure never fails a finished run."""
    try:
        from stethoedge.train.plots import plot_confusion, plot_curves

        plot_curves(metrics["history"], out / "curves.png")
        for split in ("val", "test"):
            if metrics.get(split):
                plot_confusion(metrics[split]["confusion_matrix"], CLASSES, out / f"confusion_{split}.png",
                               title=f"{split}: Score {metrics[split]['score']:.3f}")
    except Exception as exc:  # matplotlib missing or a backend problem: the run itself is complete
        log.warning("could not write plots: %s", exc)


def train_seeds(cfg: TrainConfig, seeds: list[int]) -> dict[str, Any]:
    """One run per seed under RUN/seed-N; RUN/summary.json holds mean +- sd of val and test metrics."""
    from stethoedge.data.metrics import summarize_seeds

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
