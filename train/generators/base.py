"""The common interface of every generator: ``fit(data, classes)``, ``save``/``load``, ``sample(class, n)``.

Generators work on normalised log-mel spectrograms of respiratory cycles (the same Kaldi fbank
and AST normalisation as the classifier, ``stethoedge.runtime.feature_spec``) of a fixed,
configurable size: ``(n_frames, n_mels)`` per sample, 128 x 256 at full size, 16 x 32 in tests.
Tensors are ``(batch, frames, mels)`` like the classifier's input; the networks see them as
one-channel images ``(batch, 1, mels, frames)``.

A subclass defines its networks (``modules``), optimisers (``optimizers``), one optimisation
step (``train_step``) and the sampler (``_sample``); this class owns the loop: class filtering,
seeded batches, a tqdm bar, periodic atomic checkpoints and resuming from one.
"""
from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.labels import CLASSES
from stethoedge.runtime.outputs import output_path
from stethoedge.train.checkpoint import read_torch_file
from stethoedge.train.progress import progress_bar

log = logging.getLogger("stethoedge.generate")

GENERATOR_FORMAT = "stethoedge.generator"
GENERATOR_VERSION = 1


@dataclass
class MelSet:
    """Fixed-size normalised log-mels with labels (and, for the vocoder, the aligned audio)."""

    mels: torch.Tensor  # (n, n_frames, n_mels) float32, normalised with ``spec``
    labels: torch.Tensor  # (n,) int64, 4-class index
    spec: FeatureSpec
    audio: torch.Tensor | None = None  # (n, n_frames * frame_shift) float32, aligned with ``mels``

    def __post_init__(self) -> None:
        if self.mels.dim() != 3 or self.labels.shape != (self.mels.shape[0],):
            raise DataError(f"a MelSet needs mels (n, frames, mels) and labels (n,), got {tuple(self.mels.shape)} "
                            f"and {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(n_frames, n_mels) of one sample."""
        return int(self.mels.shape[1]), int(self.mels.shape[2])

    def subset(self, classes: Sequence[int] | None) -> MelSet:
        """Only the samples of ``classes`` (all when None)."""
        if classes is None:
            return self
        keep = torch.isin(self.labels, torch.as_tensor(list(classes), dtype=torch.int64))
        return MelSet(self.mels[keep], self.labels[keep], self.spec, None if self.audio is None else self.audio[keep])

    def class_counts(self) -> list[int]:
        """Samples per class, in CLASSES order."""
        return np.bincount(self.labels.numpy(), minlength=len(CLASSES)).tolist()


def parse_classes(names: Sequence[str | int] | None) -> list[int] | None:
    """Class names or indices (``["crackle", "both"]``, ``[1, 3]``) -> sorted indices; None stays None."""
    if names is None:
        return None
    out = set()
    for name in names:
        if isinstance(name, int) or str(name).isdigit():
            index = int(name)
            if not 0 <= index < len(CLASSES):
                raise DataError(f"class index {index} is not in 0..{len(CLASSES) - 1}")
        elif name in CLASSES:
            index = CLASSES.index(name)
        else:
            raise DataError(f"unknown class {name!r}; use one of {', '.join(CLASSES)}")
        out.add(index)
    if not out:
        raise DataError("an empty class list trains nothing")
    return sorted(out)


@dataclass
class GeneratorConfig:
    """Fields shared by every generator; subclasses add their architecture and optimiser fields."""

    n_mels: int = 128
    n_frames: int = 256
    n_classes: int = len(CLASSES)
    width: float = 1.0  # channel multiplier applied to every filter count
    batch_size: int = 32
    lr: float = 2e-4
    seed: int = 0

    def channels(self, base: Sequence[int]) -> list[int]:
        """Filter counts scaled by ``width`` (at least 4 each)."""
        return [max(4, int(round(c * self.width))) for c in base]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


class MelGenerator(ABC):
    """Base class of every class-conditional generator (and of the vocoder)."""

    kind: ClassVar[str] = ""
    config_class: ClassVar[type[GeneratorConfig]] = GeneratorConfig

    def __init__(self, config: GeneratorConfig | None = None, spec: FeatureSpec | None = None) -> None:
        self.config = config or self.config_class()
        self.spec = spec or FeatureSpec(n_mels=self.config.n_mels)
        self.step = 0
        self.losses: list[float] = []
        self.classes: list[int] | None = None  # classes seen in training (None: not trained yet)
        torch.manual_seed(self.config.seed)
        self.build()
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ subclass API
    @abstractmethod
    def build(self) -> None:
        """Create the networks and optimisers from ``self.config``."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Named networks (saved and moved to the device)."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers (saved for resuming)."""

    @abstractmethod
    def train_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> float:
        """One optimisation step on a batch (``mels``, ``labels``, maybe ``audio``); returns the loss."""

    @abstractmethod
    def _sample(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Samples ``(n, frames, mels)`` for ``labels`` using only ``gen`` for randomness."""

    # ------------------------------------------------------------------ common
    def to(self, device: str | torch.device) -> MelGenerator:
        """Move every network (and optimiser state) to ``device``."""
        self.device = torch.device(device)
        for m in self.modules().values():
            m.to(self.device)
        for opt in self.optimizers().values():
            for state in opt.state.values():
                for k, v in state.items():
                    if isinstance(v, torch.Tensor):
                        state[k] = v.to(self.device)
        return self

    def _check_shape(self, data: MelSet) -> None:
        expected = (self.config.n_frames, self.config.n_mels)
        if data.shape != expected:
            raise DataError(f"{self.kind}: data has samples of (frames, mels) {data.shape}, the generator was built "
                            f"for {expected}")

    def fit(self, data: MelSet, classes: Sequence[int] | None = None, steps: int = 1000,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 500, resume: bool = True,
            progress: bool = True) -> list[float]:
        """Train for ``steps`` optimisation steps in total on ``data`` (only ``classes`` when given).

        With ``checkpoint``, state is written there atomically every ``checkpoint_every`` steps and
        at the end; with ``resume`` an existing checkpoint is loaded first and training continues
        from its step count (so ``steps`` is the total, not the increment). Returns the per-step
        losses of the whole training so far.
        """
        self._check_shape(data)
        if checkpoint is not None and resume and Path(checkpoint).is_file():
            self._load_state(torch.load(checkpoint, map_location="cpu", weights_only=False))
            log.info("%s: resumed from %s at step %d", self.kind, checkpoint, self.step)
        wanted = list(classes) if classes is not None else (self.classes if self.classes is not None else None)
        data = data.subset(wanted)
        if len(data) == 0:
            raise DataError(f"{self.kind}: no training samples of the chosen classes "
                            f"{[CLASSES[c] for c in wanted or []]}")
        self.classes = sorted(set(data.labels.tolist()))
        if self.spec.norm_mean != data.spec.norm_mean or self.spec.norm_std != data.spec.norm_std:
            self.spec = data.spec
        for m in self.modules().values():
            m.train()
        rng = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        bar = progress_bar(total=steps, initial=min(self.step, steps), desc=f"fit {self.kind}", disable=not progress)
        n = len(data)
        while self.step < steps:
            index = torch.randint(0, n, (min(self.config.batch_size, n),), generator=rng)
            batch = {"mels": data.mels[index].to(self.device), "labels": data.labels[index].to(self.device)}
            if data.audio is not None:
                batch["audio"] = data.audio[index].to(self.device)
            loss = self.train_step(batch, rng)
            self.losses.append(float(loss))
            self.step += 1
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # shown by update()'s next refresh
            bar.update(1)
            if checkpoint is not None and (self.step % checkpoint_every == 0 or self.step == steps):
                self.save(checkpoint)
        bar.close()
        return list(self.losses)

    @torch.no_grad()
    def sample(self, cls: int | str, n: int, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
        """``n`` generated normalised log-mels ``(n, frames, mels)`` of class ``cls``; same seed, same samples."""
        index = parse_classes([cls])[0]
        if self.classes is None:
            raise DataError(f"{self.kind}: the generator is not trained yet (fit it or load a checkpoint)")
        if index not in self.classes:
            raise DataError(f"{self.kind}: trained on {[CLASSES[c] for c in self.classes]} only, "
                            f"cannot sample {CLASSES[index]!r}")
        if n <= 0:
            raise DataError(f"number of samples must be positive, got {n}")
        for m in self.modules().values():
            m.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = [self._sample(torch.full((min(batch_size, n - s),), index, dtype=torch.int64, device=self.device), gen)
               for s in range(0, n, batch_size)]
        return torch.cat(out).float().cpu()

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the generator and resume training."""
        return {
            "format": GENERATOR_FORMAT, "version": GENERATOR_VERSION, "kind": self.kind,
            "config": self.config.to_dict(), "feature_spec": self.spec.to_dict(), "step": self.step,
            "losses": self.losses, "classes": self.classes,
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
        }

    def _load_state(self, payload: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(payload["modules"][k])
        for k, o in self.optimizers().items():
            o.load_state_dict(payload["optimizers"][k])
        self.spec = FeatureSpec.from_dict(payload["feature_spec"])
        self.step = int(payload["step"])
        self.losses = list(payload["losses"])
        self.classes = payload["classes"]
        self.to(self.device)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the generator (weights, optimiser state, config, spec) atomically to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)  # experiment's own tree; `generate fit --out` checks it first
        with output_path(path) as tmp:
            torch.save(self.state(), tmp)
        return path

    @classmethod
    def from_state(cls, payload: dict[str, Any]) -> MelGenerator:
        """Rebuild from a ``state()`` dict."""
        known = {f.name for f in fields(cls.config_class)}
        config = cls.config_class(**{k: (tuple(v) if isinstance(v, list) else v)
                                     for k, v in payload["config"].items() if k in known})
        model = cls(config, FeatureSpec.from_dict(payload["feature_spec"]))
        model._load_state(payload)
        return model


def read_generator_file(path: str | os.PathLike) -> dict[str, Any]:
    """The payload of a generator checkpoint; anything else is a DataError."""
    p = Path(path)
    payload = read_torch_file(p, missing="no generator checkpoint (train one: stethoedge generate fit ...)",
                              what="generator checkpoint", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != GENERATOR_FORMAT:
        raise DataError(f"{p}: not a stethoedge generator checkpoint")
    if payload.get("version") != GENERATOR_VERSION:
        raise DataError(f"{p}: generator checkpoint version {payload.get('version')} is not supported")
    return payload


def conv_out(size: int, levels: int, what: str) -> int:
    """``size`` halved ``levels`` times; a DataError if it is not divisible by ``2 ** levels``."""
    if size % (2 ** levels):
        raise DataError(f"{what} {size} must be divisible by {2 ** levels} ({levels} down-sampling blocks)")
    return size // (2 ** levels)


def to_image(mels: torch.Tensor) -> torch.Tensor:
    """(batch, frames, mels) -> (batch, 1, mels, frames)."""
    return mels.transpose(1, 2).unsqueeze(1)


def from_image(img: torch.Tensor) -> torch.Tensor:
    """(batch, 1, mels, frames) -> (batch, frames, mels)."""
    return img.squeeze(1).transpose(1, 2)

