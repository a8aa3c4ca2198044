"""Adapters and LoRA: trainable fraction, delta files, merge equality, ONNX export of the merged model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.train.adapters import (AdapterConfig, BottleneckAdapter, add_adapters, apply_delta, backbone_fingerprint,
                                       has_adapters, merge_adapters, save_delta)
from stethoedge.train.model import AST, count_parameters, preset_config

SMALL = dict(n_frames=64, n_mels=32)


@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_trainable_fraction_is_at_most_3_percent_of_the_tiny_backbone(kind: str):
    model = AST(preset_config("tiny"))
    backbone = count_parameters(model)
    add_adapters(model, AdapterConfig(kind=kind))
    trainable = count_parameters(model, trainable_only=True)
    assert 0 < trainable <= 0.03 * backbone, (trainable, backbone)
    assert all(p.requires_grad for p in model.head.parameters()), "the new classification head trains"
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("blocks.") and
                   "lora_" not in n and ".down." not in n and ".up." not in n), "backbone must be frozen"


def _perturb_adapters(model: AST) -> None:
    """Give the (zero-initialised) adapter branches non-zero weights, as training would."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and not name.startswith("head."):
                p.normal_(0, 0.1)


@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_merge_removes_adapter_modules_and_matches(kind: str, tmp_path: Path):
    torch.manual_seed(0)
    model = AST(preset_config("micro", depth=2, **SMALL)).eval()
    base_out = model(torch.randn(1, 64, 32))
    add_adapters(model, AdapterConfig(kind=kind, reduction=4, rank=4))
    x = torch.randn(4, 64, 32)
    assert has_adapters(model)
    _perturb_adapters(model)
    with torch.no_grad():
        unmerged = model(x)
    merge_adapters(model)
    assert not has_adapters(model) and type(model.blocks[0].attn.qkv) is torch.nn.Linear
    assert set(model.state_dict()) == set(AST(model.cfg).state_dict()), "merged model is a plain AST"
    with torch.no_grad():
        merged = model(x)
    assert float((merged - unmerged).abs().max()) <= 1e-5
    assert not torch.allclose(unmerged[:1], base_out, atol=1e-4), "the adapters changed the function"
    ort = pytest.importorskip("onnxruntime")
    from stethoedge.export.onnx_export import export_onnx

    path = export_onnx(model, tmp_path / "merged.onnx", (64, 32))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, unmerged.numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_delta_file_is_small_and_reapplies_to_the_same_backbone(kind: str, tmp_path: Path):
    torch.manual_seed(0)
    backbone = AST(preset_config("micro", depth=2, **SMALL))
    fingerprint = backbone_fingerprint(backbone)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    cfg = AdapterConfig(kind=kind, reduction=4, rank=4)
    tuned = add_adapters(backbone, cfg)
    _perturb_adapters(tuned)
    save_delta(tmp_path / "delta.pt", tuned, cfg, fingerprint)
    fresh = AST(preset_config("micro", depth=2, **SMALL))
    fresh.load_state_dict(state)
    apply_delta(fresh, tmp_path / "delta.pt")
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), tuned.eval()(x))
    delta = torch.load(tmp_path / "delta.pt")["state_dict"]
    assert sum(v.numel() for v in delta.values()) < 0.2 * count_parameters(AST(fresh.cfg))
    other = AST(preset_config("micro", depth=2, **SMALL))
    with pytest.raises(DataError, match="another backbone"):
        apply_delta(other, tmp_path / "delta.pt")


def test_bottleneck_starts_as_identity():
    lin = torch.nn.Linear(8, 8)
    ad = BottleneckAdapter(lin, 2)
    x = torch.randn(3, 8)
    torch.testing.assert_close(ad(x), lin(x))
