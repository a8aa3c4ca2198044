"""YAMNet frozen-embedding baseline (train/yamnet_embed.py) on the real yamnet.tflite."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="ai-edge-litert runs YAMNet: pip install ai-edge-litert")

from stethoedge.runtime.errors import DataError  # noqa: E402
from stethoedge.train.yamnet_embed import (  # noqa: E402
    EMBED_DIM, N_CLASSES, PATCH_SAMPLES, SINE_WAVE_CLASS, YamnetEmbedder, default_weights, embed_segments,
    patch_starts)

SR = 16000
WEIGHTS = default_weights()
needs_weights = pytest.mark.skipif(
    not WEIGHTS.is_file(),
    reason=f"YAMNet weights not found at {WEIGHTS}: set STETHOEDGE_YAMNET or place yamnet.tflite in ../shared/weights")


@pytest.fixture(scope="module")
def yamnet() -> YamnetEmbedder:
    return YamnetEmbedder(WEIGHTS)


def sine(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def test_patch_framing() -> None:
    assert patch_starts(PATCH_SAMPLES) == [0]
    assert patch_starts(3 * SR) == [0, 7800, 15600, 23400, 31200]  # last partial patch dropped
    assert len(patch_starts(23399)) == 1 and len(patch_starts(23400)) == 2


@needs_weights
def test_sine_scores_rank_sine_wave_top5(yamnet: YamnetEmbedder) -> None:
    scores = yamnet.scores(sine(1000.0, 3.0))
    assert scores.shape == (N_CLASSES,) and scores.dtype == np.float32
    assert SINE_WAVE_CLASS in np.argsort(-scores)[:5]


@needs_weights
def test_embedding_shape_and_finite(yamnet: YamnetEmbedder) -> None:
    emb = yamnet.embed(sine(1000.0, 2.0))
    assert emb.shape == (EMBED_DIM,) and emb.dtype == np.float32
    assert np.all(np.isfinite(emb)) and np.any(emb != 0)
    assert yamnet.embedding_name == "yamnet_frames/global_average_pooling2d/Mean"


@needs_weights
def test_short_audio_is_cyclically_padded(yamnet: YamnetEmbedder) -> None:
    short = sine(1000.0, 0.3)
    emb = yamnet.embed(short)
    assert emb.shape == (EMBED_DIM,) and np.all(np.isfinite(emb))
    tiled = np.tile(short, -(-PATCH_SAMPLES // short.size))[:PATCH_SAMPLES]
    np.testing.assert_allclose(emb, yamnet.embed(tiled), rtol=0, atol=1e-6)


@needs_weights
def test_embed_segments_caches(yamnet: YamnetEmbedder, tmp_path) -> None:
    segs = [sine(500.0, 0.5), sine(1000.0, 1.5)]
    path = tmp_path / "emb.npy"
    out = embed_segments(segs, path, embedder=yamnet, progress=False)
    assert out.shape == (2, EMBED_DIM) and out.dtype == np.float32 and path.is_file()

    def untouched():
        raise AssertionError("the cache should be read without embedding")
        yield

    np.testing.assert_array_equal(embed_segments(untouched(), path), out)


def test_missing_file_is_data_error(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        YamnetEmbedder(tmp_path / "absent.tflite")


def test_corrupt_file_is_data_error(tmp_path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(DataError, match="cannot load YAMNet"):
        YamnetEmbedder(bad)
