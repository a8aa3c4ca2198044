"""Pretrained AST initialisation from LOCAL files (nothing is downloaded).

Two formats:

* a Hugging Face AST directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``),
  as written by ``ASTForAudioClassification.save_pretrained`` (both the legacy
  ``encoder.layer.N.attention.attention.query`` names and the transformers 5 ``layers.N.attention.q_proj``
  names are understood);
* the original AST AudioSet checkpoint of Gong et al. (``audioset_10_10_0.4593.pth``: keys
  ``module.v.blocks.0.attn.qkv.weight``, ``module.v.pos_embed``, ``module.mlp_head.0.weight`` ...).

Every backbone weight of our AST must be filled from the file: a missing one raises, so no layer
is silently left random. Checkpoint keys that have no place in our model are reported loudly
(logged as a warning and returned). The classification head is loaded only when its class count
matches; positional embeddings are interpolated when the patch grid differs.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from stethoedge.runtime.errors import DataError
from stethoedge.train.checkpoint import read_torch_file
from stethoedge.train.model import AST, ASTConfig, interpolate_pos_embed

log = logging.getLogger("stethoedge.train")


@dataclass
class LoadReport:
    """What a pretrained load did: mapped our keys, unused checkpoint keys, re-initialised head keys."""

    mapped: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    head_reinitialised: list[str] = field(default_factory=list)
    pos_embed_interpolated: tuple[tuple[int, int], tuple[int, int]] | None = None

    def summary(self) -> str:
        """One line for logs."""
        text = f"{len(self.mapped)} tensors mapped"
        if self.pos_embed_interpolated:
            text += f", positional embedding interpolated {self.pos_embed_interpolated[0]} -> {self.pos_embed_interpolated[1]}"
        if self.head_reinitialised:
            text += f", head re-initialised ({len(self.head_reinitialised)} tensors)"
        if self.unused:
            text += f", {len(self.unused)} checkpoint keys UNUSED: {', '.join(self.unused[:8])}"
        return text


def _grid(n_mels: int, n_frames: int, patch: int, fstride: int, tstride: int) -> tuple[int, int]:
    return (n_mels - patch) // fstride + 1, (n_frames - patch) // tstride + 1


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    st = directory / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    binary = directory / "pytorch_model.bin"
    if binary.is_file():
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise DataError(f"{directory}: no model.safetensors or pytorch_model.bin")


_HF_LAYER = [
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.", r"layers.\1.attention.\2."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"encoder\.layer\.(\d+)\.", r"layers.\1."),
]
_HF_QKV = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


def _normalise_hf_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bring legacy and transformers-5 key names to one form (``layers.N.attention.q_proj`` ...)."""
    out = {}
    for key, value in state.items():
        k = key.removeprefix("audio_spectrogram_transformer.")
        for pattern, repl in _HF_LAYER:
            k = re.sub(pattern, repl, k)
        k = re.sub(r"attention\.(query|key|value)\.", lambda m: f"attention.{_HF_QKV[m.group(1)]}.", k)
        out[k] = value
    return out


def hf_to_stethoedge(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Hugging Face AST tensors -> our AST's names (q/k/v fused into ``qkv``); unknown keys are kept as-is."""
    src = _normalise_hf_keys(state)
    out: dict[str, torch.Tensor] = {}
    simple = {
        "embeddings.cls_token": "cls_token", "embeddings.distillation_token": "dist_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
        "classifier.layernorm.weight": "head.0.weight", "classifier.layernorm.bias": "head.0.bias",
        "classifier.dense.weight": "head.1.weight", "classifier.dense.bias": "head.1.bias",
    }
    for i in range(depth):
        h, o = f"layers.{i}.", f"blocks.{i}."
        simple.update({
            h + "layernorm_before.weight": o + "norm1.weight", h + "layernorm_before.bias": o + "norm1.bias",
            h + "layernorm_after.weight": o + "norm2.weight", h + "layernorm_after.bias": o + "norm2.bias",
            h + "attention.o_proj.weight": o + "attn.proj.weight", h + "attention.o_proj.bias": o + "attn.proj.bias",
            h + "mlp.fc1.weight": o + "mlp.fc1.weight", h + "mlp.fc1.bias": o + "mlp.fc1.bias",
            h + "mlp.fc2.weight": o + "mlp.fc2.weight", h + "mlp.fc2.bias": o + "mlp.fc2.bias",
        })
        for kind in ("weight", "bias"):
            parts = [h + f"attention.{p}.{kind}" for p in ("q_proj", "k_proj", "v_proj")]
            if all(p in src for p in parts):
                out[o + f"attn.qkv.{kind}"] = torch.cat([src.pop(p) for p in parts], dim=0)
    for key, value in src.items():
        out[simple.get(key, key)] = value
    return out


def original_to_stethoedge(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original AST (``module.v.*``, ``module.mlp_head.*``) -> our names; unknown keys are kept as-is."""
    out = {}
    for key, value in state.items():
        k = key.removeprefix("module.")
        if k.startswith("v."):
            k = k[2:]
        k = k.replace("mlp_head.", "head.")
        out[k] = value
    return out


def load_mapped_state(model: AST, mapped: dict[str, torch.Tensor], src_grid: tuple[int, int],
                      source: str) -> LoadReport:
    """Copy ``mapped`` into ``model``: every backbone tensor must be present; report the rest."""
    report = LoadReport()
    own = model.state_dict()
    if "pos_embed" in mapped:
        dst_grid = model.cfg.grid
        if tuple(src_grid) != tuple(dst_grid):
            mapped["pos_embed"] = interpolate_pos_embed(mapped["pos_embed"], src_grid, dst_grid)
            report.pos_embed_interpolated = (tuple(src_grid), tuple(dst_grid))
    new_state = {}
    for key, value in mapped.items():
        if key not in own:
            report.unused.append(key)
        elif own[key].shape != value.shape:
            if key.startswith("head."):
                report.head_reinitialised.append(key)
            else:
                raise DataError(f"{source}: {key} has shape {tuple(value.shape)}, the model needs {tuple(own[key].shape)}")
        else:
            new_state[key] = value
    missing = [k for k in own if k not in new_state and not k.startswith("head.")]
    if missing:
        raise DataError(f"{source}: {len(missing)} backbone tensors have no weights in the checkpoint "
                        f"(they would stay random): {', '.join(missing[:10])}")
    report.head_reinitialised += [k for k in own if k.startswith("head.") and k not in new_state
                                  and k not in report.head_reinitialised]
    model.load_state_dict(new_state, strict=False)
    report.mapped = sorted(new_state)
    if report.unused:
        log.warning("%s: %d checkpoint keys were not used: %s", source, len(report.unused), ", ".join(report.unused))
    log.info("%s: %s", source, report.summary())
    return report


def config_from_hf(directory: str | os.PathLike, n_frames: int, n_mels: int, n_classes: int) -> ASTConfig:
    """Our ASTConfig for a Hugging Face AST config.json, at our input size and class count."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise DataError(f"{directory}: no config.json (not a Hugging Face model directory)")
    hf = json.loads(path.read_text())
    if hf.get("model_type") not in (None, "audio-spectrogram-transformer"):
        raise DataError(f"{path}: model_type {hf.get('model_type')!r} is not an AST")
    dim = int(hf.get("hidden_size", 768))
    eps = float(hf.get("layer_norm_eps", 1e-12))
    return ASTConfig(n_frames=n_frames, n_mels=n_mels, n_classes=n_classes, patch_size=int(hf.get("patch_size", 16)),
                     fstride=int(hf.get("frequency_stride", 10)), tstride=int(hf.get("time_stride", 10)), dim=dim,
                     depth=int(hf.get("num_hidden_layers", 12)), heads=int(hf.get("num_attention_heads", 12)),
                     mlp_ratio=int(hf.get("intermediate_size", 4 * dim)) / dim, norm_eps=eps, head_norm_eps=eps)


def load_hf_ast(directory: str | os.PathLike, n_frames: int = 798, n_mels: int = 128, n_classes: int = 4,
                **overrides: object) -> tuple[AST, LoadReport]:
    """Our AST initialised from a local Hugging Face AST directory."""
    directory = Path(directory)
    cfg = replace(config_from_hf(directory, n_frames, n_mels, n_classes), **overrides)
    hf = json.loads((directory / "config.json").read_text())
    src_grid = _grid(int(hf.get("num_mel_bins", 128)), int(hf.get("max_length", 1024)), cfg.patch_size,
                     cfg.fstride, cfg.tstride)
    model = AST(cfg)
    mapped = hf_to_stethoedge(_read_weights(directory), cfg.depth)
    return model, load_mapped_state(model, mapped, src_grid, str(directory))


def load_original_ast(path: str | os.PathLike, cfg: ASTConfig, src_frames: int = 1024,
                      src_mels: int = 128) -> tuple[AST, LoadReport]:
    """Our AST (architecture ``cfg``) initialised from an original AST checkpoint file.

    The file holds no config: dim and depth are checked against the tensors, the strides and
    heads come from ``cfg``; ``src_frames`` is the input length it was trained on (AudioSet: 1024).
    """
    path = Path(path)
    state = read_torch_file(path, missing="no such checkpoint file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    mapped = original_to_stethoedge(state)
    if "cls_token" not in mapped:
        raise DataError(f"{path}: not an original AST checkpoint (no module.v.cls_token)")
    dim = mapped["cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in mapped if (m := re.match(r"blocks\.(\d+)\.", k)))
    if (dim, depth) != (cfg.dim, cfg.depth):
        raise DataError(f"{path}: checkpoint is dim {dim} depth {depth}, the config asks for dim {cfg.dim} depth {cfg.depth}")
    model = AST(cfg)
    src_grid = _grid(src_mels, src_frames, cfg.patch_size, cfg.fstride, cfg.tstride)
    return model, load_mapped_state(model, mapped, src_grid, str(path))


def load_pretrained(source: str | os.PathLike, cfg: ASTConfig) -> tuple[AST, LoadReport]:
    """Dispatch on the source: a directory is Hugging Face, a file is the original AST format."""
    p = Path(source)
    if p.is_dir():
        return load_hf_ast(p, cfg.n_frames, cfg.n_mels, cfg.n_classes, dropout=cfg.dropout, drop_path=cfg.drop_path)
    return load_original_ast(p, cfg)
