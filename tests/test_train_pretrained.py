"""Pretrained loaders: a Hugging Face AST directory and the original AST checkpoint format, built here."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.train.model import AST, ASTConfig, interpolate_pos_embed
from stethoedge.train.pretrained import load_hf_ast, load_original_ast

transformers = pytest.importorskip("transformers")

FRAMES, MELS = 100, 32


def _hf_model(num_labels: int = 4) -> "transformers.ASTForAudioClassification":
    torch.manual_seed(0)
    cfg = transformers.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 max_length=FRAMES, num_mel_bins=MELS, num_labels=num_labels,
                                 frequency_stride=10, time_stride=10)
    model = transformers.ASTForAudioClassification(cfg).eval()
    with torch.no_grad():  # HF initialises tokens/pos to zeros and LayerNorm to 1/0: randomise everything
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def test_hf_directory_maps_every_weight_and_matches_logits(tmp_path: Path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    ours, report = load_hf_ast(tmp_path / "hf", n_frames=FRAMES, n_mels=MELS, n_classes=4)
    assert not report.unused and not report.head_reinitialised
    assert set(report.mapped) == set(ours.state_dict()), "every tensor of our AST must come from the file"
    x = torch.randn(3, FRAMES, MELS)
    with torch.no_grad():
        ref = hf(input_values=x).logits
        got = ours.eval()(x)
        emb = hf.audio_spectrogram_transformer(input_values=x).pooler_output
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.embed(x), emb, atol=1e-5, rtol=1e-5)


def test_hf_other_class_count_reinitialises_only_the_head_and_interpolates(tmp_path: Path):
    _hf_model(num_labels=527).save_pretrained(tmp_path / "hf")
    ours, report = load_hf_ast(tmp_path / "hf", n_frames=2 * FRAMES, n_mels=MELS, n_classes=4)
    assert sorted(report.head_reinitialised) == ["head.1.bias", "head.1.weight"]
    assert report.pos_embed_interpolated == ((2, 9), (2, 19))
    backbone = [k for k in ours.state_dict() if not k.startswith("head.1")]
    assert set(report.mapped) == set(backbone)
    assert ours(torch.zeros(1, 2 * FRAMES, MELS)).shape == (1, 4)


def _original_checkpoint(path: Path, cfg: ASTConfig, extra: bool = False) -> dict[str, torch.Tensor]:
    """An original-AST-format state dict (``module.v.*``) built from a random model of ``cfg``."""
    torch.manual_seed(1)
    src = AST(cfg)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.2)
    state = {}
    for k, v in src.state_dict().items():
        state["module.mlp_head." + k[5:] if k.startswith("head.") else "module.v." + k] = v
    if extra:
        state["module.v.head.weight"] = torch.zeros(527, cfg.dim)  # timm leftovers the AST code never uses
    torch.save(state, path)
    return src


def test_original_ast_format_maps_every_weight(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    cfg = ASTConfig(n_frames=FRAMES, n_mels=MELS, dim=32, depth=2, heads=2, fstride=10, tstride=10)
    src = _original_checkpoint(tmp_path / "audioset.pth", cfg, extra=True)
    with caplog.at_level(logging.WARNING, logger="stethoedge.train"):
        ours, report = load_original_ast(tmp_path / "audioset.pth", cfg, src_frames=FRAMES, src_mels=MELS)
    assert set(report.mapped) == set(ours.state_dict())
    assert report.unused == ["head.weight"] and "not used" in caplog.text, "unmapped keys are reported loudly"
    x = torch.randn(2, FRAMES, MELS)
    torch.testing.assert_close(ours.eval()(x), src.eval()(x))
    assert "module.v.blocks.0.attn.qkv.weight" in torch.load(tmp_path / "audioset.pth")


def test_original_ast_missing_block_is_an_error(tmp_path: Path):
    cfg = ASTConfig(n_frames=FRAMES, n_mels=MELS, dim=32, depth=2, heads=2)
    _original_checkpoint(tmp_path / "a.pth", cfg)
    state = torch.load(tmp_path / "a.pth")
    del state["module.v.blocks.1.mlp.fc2.weight"]
    torch.save(state, tmp_path / "a.pth")
    with pytest.raises(DataError, match="stay random"):
        load_original_ast(tmp_path / "a.pth", cfg, src_frames=FRAMES, src_mels=MELS)


def test_pos_embed_interpolation_keeps_tokens_and_is_identity_on_same_grid():
    pos = torch.randn(1, 2 + 3 * 5, 8)
    assert interpolate_pos_embed(pos, (3, 5), (3, 5)) is pos
    out = interpolate_pos_embed(pos, (3, 5), (3, 9))
    assert out.shape == (1, 2 + 27, 8) and torch.equal(out[:, :2], pos[:, :2])
