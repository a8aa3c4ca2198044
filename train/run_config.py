"""``RunConfig``: everything one ``stethoedge train`` run is made of, as one nested, serialisable value.

Sections (each a dataclass)::

    data     DataConfig     dataset root, the LABEL SET, the feature spec, validation share, sampling,
                            synthetic sets, augmentation, feature cache
    model    ModelConfig    preset and shape overrides, drop path, pretrained init
    optim    OptimConfig    optimizer (SAM / ASAM / AdamW), schedule, batch size, regularisation, EMA, AMP
    adapter  AdapterSettings  adapters / LoRA on a frozen backbone
    distill  DistillConfig  teacher run, temperature, alpha
    aft      AftConfig      adversarial fine-tuning against synthetic data

plus run-level fields (out, seed, epochs, early stopping, checkpointing, resume, threads, device).

``RunConfig.to_dict()`` is what RUN/config.json (key ``"run"``), the checkpoint (``meta["run_config"]``)
and so the exported bundle carry; ``RunConfig.from_dict`` reads it back and refuses unknown keys,
naming them (``data.labelz``). ``RunConfig.from_any`` also reads the flat layout of the first
version (``TrainConfig`` fields: recipes, config.json's ``"train"`` table), mapped by ``FLAT``.
The label set (``data.labels``) travels with the model: head size, metrics, checkpoint and bundle
manifest all take it from here. Torch-free.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Any

from stethoedge.runtime.errors import DataError, StethoedgeError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.labels import CLASSES
from stethoedge.runtime.manifest import label_problem

WHAT = "training option"


@dataclass
class DataConfig:
    """Where the examples come from and what they are labelled with."""

    root: str = ""  # ICBHI layout, or class folders <root>/<label>/*.wav (any label set)
    labels: tuple[str, ...] = CLASSES  # the label set: class index = position; head size = len(labels)
    feature_spec: FeatureSpec = field(default_factory=FeatureSpec)  # front end (normalisation stats from training)
    val_fraction: float = 0.25
    weighted_sampler: bool = True
    synthetic: list[str] = field(default_factory=list)  # synthetic sets added to TRAINING only
    augment: str | None = None  # policy name from stethoedge.train.augment
    cache_dir: str | None = None  # on-disk cache of fbank features


@dataclass
class ModelConfig:
    """The classifier: a preset with shape overrides (e.g. the edge student: fewer layers, stride 16)."""

    preset: str = "nano"
    depth: int | None = None
    fstride: int | None = None
    tstride: int | None = None
    drop_path: float = 0.0
    init: str | None = None  # pretrained weights: Hugging Face AST directory or original AST .pth


@dataclass
class OptimConfig:
    """Optimizer, schedule and regularisation."""

    optimizer: str = "sam"  # sam | asam | adamw
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    rho: float = 0.05
    batch_size: int = 16
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 = off; evaluation and checkpoints use the EMA weights when on
    amp: str = "none"  # none | bf16 | fp16


@dataclass
class AdapterSettings:
    """Parameter-efficient fine-tuning (``stethoedge.train.adapters.AdapterConfig`` is built from it)."""

    kind: str = "none"  # none | bottleneck | lora
    reduction: int = 16
    where: str = "both"
    rank: int = 8


@dataclass
class DistillConfig:
    """Knowledge distillation from a trained run (same label set and input shape)."""

    teacher: str | None = None
    temperature: float = 4.0
    alpha: float = 0.5


@dataclass
class AftConfig:
    """Adversarial fine-tuning: a domain head behind gradient reversal separates real from synthetic."""

    enabled: bool = False
    weight: float = 0.2


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
                             "adapter": AdapterSettings, "distill": DistillConfig, "aft": AftConfig}


@dataclass
class RunConfig:
    """One training run. Defaults: the CPU demo (nano AST, 8 epochs, SAM, the 4 ICBHI classes)."""

    out: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    distill: DistillConfig = field(default_factory=DistillConfig)
    aft: AftConfig = field(default_factory=AftConfig)
    seed: int = 0
    epochs: int = 8
    early_stopping: int = 0  # patience in epochs without a better validation Score; 0 = off
    checkpoint_every: int = 0  # steps between resumable state saves (0: end of each epoch only)
    resume: bool = True  # continue from RUN/state.pt when it exists
    stop_after_steps: int | None = None  # stop (state saved) after this many steps: interruption tests
    threads: int | None = None
    device: str | None = None  # default: cuda when available, else cpu

    def __post_init__(self) -> None:
        labels = tuple(self.data.labels)
        # the bundle's own rule (runtime/manifest.py), so a run cannot train a label set its export refuses
        problem = label_problem(labels) if all(isinstance(n, str) for n in labels) else "must all be strings"
        if problem:
            raise DataError(f"data.labels {problem} (got {list(labels)})")
        self.data.labels = labels

    @property
    def labels(self) -> tuple[str, ...]:
        """The label set (``data.labels``)."""
        return self.data.labels

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (what config.json, the checkpoint and the bundle store)."""
        out = asdict(self)
        out["data"]["labels"] = list(self.data.labels)
        out["data"]["feature_spec"] = self.data.feature_spec.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """The nested layout of ``to_dict``; unknown or missing-section keys are a DataError naming them."""
        if not isinstance(values, dict):
            raise DataError(f"expected a table of {WHAT}s, got {type(values).__name__}")
        top = {}
        for f in fields(cls):
            if f.name in values and f.name in SECTIONS:
                top[f.name] = _section(f.name, values[f.name])
            elif f.name in values:
                top[f.name] = values[f.name]
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise DataError(f"unknown {WHAT}(s): {', '.join(unknown)}")
        return cls(**top)

    @classmethod
    def from_any(cls, values: dict[str, Any]) -> "RunConfig":
        """Nested, flat or mixed keys: the flat layout of the first version (``TrainConfig`` fields, config.json's
        "train"), or a recipe that gives ``lr = 1e-3`` beside an ``[optim]`` table."""
        return cls.from_dict(nest(values))

    @classmethod
    def coerce(cls, cfg: Any) -> "RunConfig":
        """A RunConfig from a RunConfig, a flat ``TrainConfig`` (any dataclass of flat fields) or a dict."""
        if isinstance(cfg, cls):
            return cfg
        if is_dataclass(cfg) and not isinstance(cfg, type):
            return cls.from_any(asdict(cfg))
        if isinstance(cfg, dict):
            return cls.from_any(cfg)
        raise TypeError(f"not a run configuration: {type(cfg).__name__}")

    def flat(self) -> dict[str, Any]:
        """The flat (``TrainConfig``) view: the first version's keys, plus ``labels`` / ``feature_spec``
        only when they differ from the defaults (so flat dicts written before them compare equal)."""
        nested = self.to_dict()
        out = {name: _get(nested, path) for name, path in FLAT.items()}
        defaults = RunConfig().to_dict()
        for name in ("labels", "feature_spec"):
            if out[name] == defaults["data"][name]:
                del out[name]
        return out


#: Flat key (the first version's ``TrainConfig`` field, and the CLI flag's dest) -> dotted RunConfig path.
FLAT: dict[str, str] = {
    "data": "data.root", "labels": "data.labels", "feature_spec": "data.feature_spec",
    "val_fraction": "data.val_fraction", "weighted_sampler": "data.weighted_sampler",
    "synthetic": "data.synthetic", "augment": "data.augment", "cache_dir": "data.cache_dir",
    "preset": "model.preset", "depth": "model.depth", "fstride": "model.fstride", "tstride": "model.tstride",
    "drop_path": "model.drop_path", "init": "model.init",
    "optimizer": "optim.optimizer", "lr": "optim.lr", "weight_decay": "optim.weight_decay",
    "warmup_epochs": "optim.warmup_epochs", "rho": "optim.rho", "batch_size": "optim.batch_size",
    "label_smoothing": "optim.label_smoothing", "grad_clip": "optim.grad_clip", "ema_decay": "optim.ema_decay",
    "amp": "optim.amp",
    "adapter": "adapter.kind", "adapter_reduction": "adapter.reduction", "adapter_where": "adapter.where",
    "lora_rank": "adapter.rank",
    "distill_from": "distill.teacher", "distill_temperature": "distill.temperature", "distill_alpha": "distill.alpha",
    "aft": "aft.enabled", "aft_lambda": "aft.weight",
    "out": "out", "seed": "seed", "epochs": "epochs", "early_stopping": "early_stopping",
    "checkpoint_every": "checkpoint_every", "resume": "resume", "stop_after_steps": "stop_after_steps",
    "threads": "threads", "device": "device",
}


def leaf_paths() -> list[str]:
    """Every dotted leaf field of RunConfig (``data.labels``, ``optim.lr``, ``seed``...)."""
    out = []
    for f in fields(RunConfig):
        if f.name in SECTIONS:
            out += [f"{f.name}.{g.name}" for g in fields(SECTIONS[f.name])]
        else:
            out.append(f.name)
    return out


def default_of(path: str) -> Any:
    """The default value of a dotted RunConfig field."""
    return _get(asdict(RunConfig()), path)


def nest(values: dict[str, Any]) -> dict[str, Any]:
    """Flat or mixed keys -> the nested layout (sections as dicts); unknown keys are kept for from_dict to name."""
    if not isinstance(values, dict):
        raise DataError(f"expected a table of {WHAT}s, got {type(values).__name__}")
    nested: dict[str, Any] = {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            nested.setdefault(key, {}).update(value)
        elif key in FLAT and FLAT[key] != key:
            flat[key] = value
        else:
            nested[key] = value
    for key, value in flat.items():
        section, name = FLAT[key].split(".")
        nested.setdefault(section, {})[name] = value
    return nested


def set_flat(nested: dict[str, Any], key: str, value: Any) -> None:
    """Set the field a flat key (``lr``, ``distill_from``...) names in a nested dict."""
    path = FLAT.get(key, key).split(".")
    target = nested
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def _get(nested: dict[str, Any], path: str) -> Any:
    value: Any = nested
    for part in path.split("."):
        value = value[part]
    return value


def _section(name: str, values: Any) -> Any:
    cls = SECTIONS[name]
    if not isinstance(values, dict):
        raise DataError(f"{WHAT} {name!r} must be a table of {', '.join(f.name for f in fields(cls))}")
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise DataError(f"unknown {WHAT}(s): {', '.join(f'{name}.{k}' for k in unknown)}")
    values = dict(values)
    if name == "data":
        if "labels" in values:
            labels = values["labels"]
            if isinstance(labels, str):
                labels = [s.strip() for s in labels.split(",")]
            if not isinstance(labels, (list, tuple)):
                raise DataError(f"{WHAT} data.labels must be a list of class names, got {labels!r}")
            values["labels"] = tuple(labels)
        if "feature_spec" in values and not isinstance(values["feature_spec"], FeatureSpec):
            if not isinstance(values["feature_spec"], dict):
                raise DataError(f"{WHAT} data.feature_spec must be a table (FeatureSpec.to_dict)")
            try:
                values["feature_spec"] = FeatureSpec.from_dict(values["feature_spec"])
            except (StethoedgeError, TypeError, ValueError, KeyError) as exc:
                raise DataError(f"{WHAT} data.feature_spec: {exc}") from None
        if "synthetic" in values:
            syn = values["synthetic"]
            syn = [] if syn is None else [syn] if isinstance(syn, str) else syn
            if not isinstance(syn, (list, tuple)) or not all(isinstance(s, str) for s in syn):
                raise DataError(f"{WHAT} data.synthetic must be a dataset path or a list of them, got {values['synthetic']!r}")
            values["synthetic"] = list(syn)
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
               and f.name not in values]
    if missing:
        raise DataError(f"missing required {WHAT}(s): {', '.join(f'{name}.{k}' for k in missing)}")
    return cls(**values)
