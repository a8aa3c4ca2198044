"""Ensembles of trained runs as one exportable model.

``save_ensemble_run(run_dirs, out_dir)`` writes a run directory whose checkpoint
``load_checkpoint`` turns into ``EnsembleAST``: input the features normalised with the FIRST
member's statistics, each member re-normalised to its own (an affine map folded in as buffers),
output ``log(mean_k softmax(member_k(x)))`` so the runtime's softmax yields the averaged probabilities.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from stethoedge.runtime.outputs import atomic_write_bytes, atomic_write_text, output_path
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.train.model import AST, ASTConfig


class EnsembleAST(nn.Module):
    """Probability-averaging ensemble of ASTs sharing one input."""

    def __init__(self, members: list[AST], scales: list[float], shifts: list[float]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32))
        self.register_buffer("shifts", torch.tensor(shifts, dtype=torch.float32))
        self.cfg = members[0].cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [torch.softmax(m(x * self.scales[i] + self.shifts[i]), dim=-1) for i, m in enumerate(self.members)]
        return torch.log(torch.stack(probs).mean(dim=0).clamp_min(1e-12))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the members' pooled embeddings (members must share dim)."""
        return torch.stack([m.embed(x * self.scales[i] + self.shifts[i])
                            for i, m in enumerate(self.members)]).mean(dim=0)


def renormalisation(src: FeatureSpec, dst: FeatureSpec) -> tuple[float, float]:
    """(scale, shift) with x_dst = scale * x_src + shift for AST-normalised features of two specs."""
    return src.norm_std / dst.norm_std, (src.norm_mean - dst.norm_mean) / (2.0 * dst.norm_std)


def build_ensemble(members: list[AST], specs: list[FeatureSpec]) -> EnsembleAST:
    """Ensemble whose input is normalised with ``specs[0]``."""
    pairs = [renormalisation(specs[0], s) for s in specs]
    return EnsembleAST(members, [p[0] for p in pairs], [p[1] for p in pairs])


def save_ensemble_run(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write an ensemble run directory (checkpoint.pt, config.json, splits.json of the first member)."""
    from stethoedge.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint

    if not run_dirs:
        raise DataError("an ensemble needs at least one run directory")
    loaded = [load_checkpoint(r) for r in run_dirs]
    first = loaded[0]
    for run, ck in zip(run_dirs, loaded):
        if ck.labels != first.labels or ck.spec.input_shape != first.spec.input_shape:
            raise DataError(f"{run}: labels or input shape differ from {run_dirs[0]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT, "version": 1, "kind": "ensemble", "feature_spec": first.spec.to_dict(),
        "labels": list(first.labels), "model_config": first.config.to_dict(),
        "members": [{"model_config": ck.config.to_dict(), "feature_spec": ck.spec.to_dict(),
                     "state_dict": ck.model.state_dict(), "run": str(Path(r).resolve())}
                    for r, ck in zip(run_dirs, loaded)],
        "meta": {"ensemble": len(loaded), "members": [str(Path(r).resolve()) for r in run_dirs]},
    }
    with output_path(out / "checkpoint.pt") as tmp:
        torch.save(payload, tmp)
    atomic_write_text(out / "config.json", json.dumps({"ensemble": payload["meta"]["members"],
                                                       "feature_spec": first.spec.to_dict(),
                                                       "labels": list(first.labels)}, indent=2) + "\n")
    first_run = Path(run_dirs[0])
    if (first_run / "splits.json").is_file():
        atomic_write_bytes(out / "splits.json", (first_run / "splits.json").read_bytes())
    return out


def ensemble_from_payload(payload: dict) -> EnsembleAST:
    """Rebuild the module from a saved ensemble checkpoint payload."""
    from stethoedge.train.model import upgrade_state_dict

    members, specs = [], []
    for m in payload["members"]:
        model = AST(ASTConfig(**m["model_config"]))
        model.load_state_dict(upgrade_state_dict(m["state_dict"]))
        members.append(model.eval())
        specs.append(FeatureSpec.from_dict(m["feature_spec"]))
    return build_ensemble(members, specs).eval()
