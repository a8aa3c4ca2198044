"""Checkpoints: the weights plus the model config and feature spec that travel with them."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.labels import CLASSES
from stethoedge.runtime.outputs import output_path
from stethoedge.train.model import AST, ASTConfig, upgrade_state_dict

CHECKPOINT_FORMAT = "stethoedge.checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class LoadedCheckpoint:
    """A rebuilt model in eval mode with its spec and metadata (an EnsembleAST for ensemble runs)."""

    model: nn.Module
    config: Any  # ASTConfig or MNConfig
    spec: FeatureSpec
    labels: tuple[str, ...]
    meta: dict[str, Any]


def read_torch_file(path: str | os.PathLike, missing: str, what: str = "checkpoint", weights_only: bool = True) -> Any:
    """``torch.load`` on CPU; a missing or unreadable file is one DataError line, never a pickle traceback."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {missing}")
    try:
        return torch.load(p, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises pickle/zip errors of several types
        raise DataError(f"{p}: unreadable {what} ({str(exc).splitlines()[0]})") from None


#: Architectures a checkpoint may hold (see build_model).
ARCHITECTURES = ("ast", "efficientat-mn")


def architecture_of(model: nn.Module) -> str:
    """The checkpoint architecture name of a model instance."""
    from stethoedge.train.efficientat import MobileNetV3Audio

    return "efficientat-mn" if isinstance(model, MobileNetV3Audio) else "ast"


def build_model(architecture: str, config: dict[str, Any]) -> tuple[nn.Module, Any]:
    """An untrained model and its config object for a checkpoint's architecture name and config dict."""
    if architecture == "efficientat-mn":
        from stethoedge.train.efficientat import MNConfig, MobileNetV3Audio

        cfg = MNConfig(**config)
        return MobileNetV3Audio(cfg), cfg
    if architecture == "ast":
        ast_cfg = ASTConfig(**config)
        return AST(ast_cfg), ast_cfg
    raise DataError(f"unknown architecture {architecture!r}; this stethoedge knows {', '.join(ARCHITECTURES)}")


def save_checkpoint(path: Path, model: nn.Module, config: Any, spec: FeatureSpec, *,
                    labels: tuple[str, ...] | list[str] = CLASSES, **meta: Any) -> None:
    """Write weights + architecture + config + spec + label set atomically (temporary file, then rename).

    ``labels``: the model's class names, index = output (the run's ``RunConfig.data.labels``); the
    exporter writes them into the bundle manifest. No adapters (merge them first).
    """
    from stethoedge.train.adapters import has_adapters

    if has_adapters(model):
        raise ValueError("merge adapters (stethoedge.train.adapters.merge_adapters) before saving a checkpoint")
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "architecture": architecture_of(model),
        "model_config": config.to_dict(),
        "feature_spec": spec.to_dict(), "labels": list(labels), "state_dict": model.state_dict(), "meta": meta,
    }
    with output_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Rebuild the model from a checkpoint file or a run directory (RUN/checkpoint.pt)."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    payload = read_torch_file(p, missing="no checkpoint (train a model first: stethoedge train --data DIR --out RUN)")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{p}: not a stethoedge checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise DataError(f"{p}: checkpoint version {payload.get('version')} is not supported")
    architecture = payload.get("architecture", "ast")
    if payload.get("kind") == "ensemble":
        from stethoedge.train.ensemble import ensemble_from_payload

        config = ASTConfig(**payload["model_config"])
        model: nn.Module = ensemble_from_payload(payload)
    else:
        model, config = build_model(architecture, payload["model_config"])
        state = payload["state_dict"]
        model.load_state_dict(upgrade_state_dict(state) if architecture == "ast" else state)
        model.eval()
    labels = payload.get("labels", list(CLASSES))  # every version wrote them; the ICBHI four if ever absent
    n_out = getattr(config, "n_classes", None)
    if not isinstance(labels, (list, tuple)) or (n_out is not None and n_out != len(labels)):
        raise DataError(f"{p}: the checkpoint's label set {labels!r} does not match its {n_out} model outputs")
    return LoadedCheckpoint(model, config, FeatureSpec.from_dict(payload["feature_spec"]), tuple(labels),
                            dict(payload.get("meta", {})))
