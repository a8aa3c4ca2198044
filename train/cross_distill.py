"""Distillation across architectures and front ends: AST -> mn04 and mn04 -> AST on the same raw audio.

The AST reads the Kaldi fbank (``kaldi-fbank`` FeatureSpec), the EfficientAT MobileNet its own
``efficientat-mel``; a teacher of one family cannot take the student's features. So the teacher
here is an ``AudioModel``: a frozen network together with its FeatureSpec, called on (batch,
window_samples) 16 kHz audio; it computes its own front end (train/features_torch.py, the twin of
the runtime's) and returns logits. The student is an ``AudioModel`` too, and
``distill_step`` mixes the hard labels and the teacher's softened outputs with
train/distill.py's ``distillation_loss`` (temperature, alpha). SAM/ASAM optimizers (train/sam.py)
take their two passes; adapters (train/adapters.py, train/cnn_adapters.py) simply leave fewer
parameters trainable.

    teacher = AudioModel(ast_model, ast_spec).frozen()
    student = AudioModel(mn04, efficientat_spec())
    history = distill(student, teacher, audio, labels, epochs=3)

Both must share the label order (same n_classes) and the window length in samples.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.train.distill import distillation_loss
from stethoedge.train.features_torch import compute_features_torch
from stethoedge.train.sam import optimizer_step


class AudioModel(nn.Module):
    """A classifier on normalised log-mel input with its own front end: (batch, samples) audio -> logits."""

    def __init__(self, model: nn.Module, spec: FeatureSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """The model's input for (batch, window_samples) audio (no gradient flows into audio)."""
        with torch.no_grad():
            return compute_features_torch(audio, self.spec).float()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(self.features(audio))

    def frozen(self) -> "AudioModel":
        """Eval mode, no parameter requires grad: a teacher."""
        self.eval()
        for p in self.parameters():
            p.requires_grad = False
        return self

    @classmethod
    def from_run(cls, run: str) -> "AudioModel":
        """The model and FeatureSpec of a training run or checkpoint (either architecture)."""
        from stethoedge.train.checkpoint import load_checkpoint

        ckpt = load_checkpoint(run)
        return cls(ckpt.model, ckpt.spec)


def check_pair(student: AudioModel, teacher: AudioModel) -> None:
    """ValueError unless the two read the same audio windows."""
    if student.spec.window_samples != teacher.spec.window_samples:
        raise ValueError(f"student windows are {student.spec.window_samples} samples, the teacher's "
                         f"{teacher.spec.window_samples}: distillation needs the same audio")
    if student.spec.sample_rate != teacher.spec.sample_rate:
        raise ValueError(f"student reads {student.spec.sample_rate} Hz audio, the teacher {teacher.spec.sample_rate} Hz")


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), batch mean: how far the student is from the soft targets."""
    return nn.functional.kl_div(nn.functional.log_softmax(student_logits / temperature, dim=-1),
                                nn.functional.log_softmax(teacher_logits / temperature, dim=-1),
                                reduction="batchmean", log_target=True)


@dataclass(frozen=True)
class DistillSettings:
    """Loss settings of ``distill_step`` / ``distill``."""

    temperature: float = 4.0
    alpha: float = 0.5  # weight of the soft (teacher) term; 1 = the teacher only
    label_smoothing: float = 0.0


def distill_step(student: AudioModel, teacher: AudioModel, audio: torch.Tensor, labels: torch.Tensor,
                 optimizer: torch.optim.Optimizer, settings: DistillSettings = DistillSettings(),
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """One optimizer step of the student towards the teacher on a batch of raw audio windows.

    ``augment`` (audio -> audio) is applied once, so teacher and student see the same augmented
    window. Returns {"loss", "kl"} (the KL of the batch before the step).
    """
    if augment is not None:
        audio = augment(audio)
    with torch.no_grad():
        target = teacher(audio).float()
    if target.shape[-1] != student_out_classes(student):
        raise ValueError(f"teacher has {target.shape[-1]} classes, the student {student_out_classes(student)}")
    x = student.features(audio)

    first: list[torch.Tensor] = []  # the logits at w (SAM's second pass is at w + e(w))

    def objective() -> torch.Tensor:
        logits = student.model(x)
        first.append(logits)
        return distillation_loss(logits, target, labels, settings.temperature, settings.alpha,
                                 settings.label_smoothing)

    loss = optimizer_step(optimizer, objective)
    logits = first[0]
    return {"loss": float(loss.detach()), "kl": float(soft_kl(logits.detach(), target, settings.temperature))}


def student_out_classes(student: AudioModel) -> int:
    """Number of classes the student predicts (``cfg.n_classes`` of an AST or MobileNetV3Audio)."""
    cfg = getattr(student.model, "cfg", None)
    if cfg is None or not hasattr(cfg, "n_classes"):
        raise ValueError("the student model has no cfg.n_classes")
    return int(cfg.n_classes)


def distill(student: AudioModel, teacher: AudioModel, audio: torch.Tensor, labels: torch.Tensor, epochs: int = 1,
            batch_size: int = 16, optimizer: torch.optim.Optimizer | None = None, lr: float = 1e-3,
            settings: DistillSettings = DistillSettings(), seed: int = 0,
            augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
            train_mode: Callable[[nn.Module], Any] | None = None) -> list[dict[str, float]]:
    """A small loop: ``epochs`` shuffled passes over (N, samples) audio; one history entry per epoch.

    The default optimizer is AdamW on the student's trainable parameters. ``train_mode`` puts the
    student in training mode (default ``model.train()``; for a frozen-BatchNorm CNN pass
    ``cnn_adapters.train_mode``). Each entry: mean loss and KL of the epoch.
    """
    check_pair(student, teacher)
    teacher.frozen()
    if optimizer is None:
        optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        (train_mode or nn.Module.train)(student.model)
        order = torch.randperm(len(audio), generator=gen)
        steps = [distill_step(student, teacher, audio[idx], labels[idx], optimizer, settings, augment)
                 for idx in order.split(batch_size)]
        history.append({"epoch": epoch + 1, "loss": sum(s["loss"] for s in steps) / len(steps),
                        "kl": sum(s["kl"] for s in steps) / len(steps)})
    student.model.eval()
    return history
