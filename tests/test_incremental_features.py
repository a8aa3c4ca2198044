"""Incremental fbank frames equal the full recomputation of every window."""
from __future__ import annotations

import numpy as np
import pytest

from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.features import compute_features
from stethoedge.runtime.incremental_features import IncrementalFeatures
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.runtime.sources import ArraySource
from stethoedge.runtime.windowing import SlidingWindower

SPEC = FeatureSpec()


@pytest.mark.parametrize("hop_s", [1.0, 2.0, 0.75])
def test_incremental_equals_full_recomputation(hop_s: float, icbhi_audio: np.ndarray):
    inc = IncrementalFeatures(SPEC)
    windower = SlidingWindower(SPEC.window_samples, int(hop_s * 16000), 32000)
    worst, n = 0.0, 0
    for chunk in ArraySource(icbhi_audio, chunk_seconds=0.3).chunks():
        for w in windower.push(chunk):
            got = inc.compute(w.audio, w.end_sample, w.available)
            worst = max(worst, float(np.abs(got - compute_features(w.audio, SPEC)).max()))
            n += 1
    assert n >= 10 and worst <= 1e-6, worst
    # Every hop here is on the 10 ms frame grid: padded windows and the first full one are
    # computed in full, every later window computes only its hop's new frames.
    padded = sum(1 for k in range(1, n + 1) if 32000 + (k - 1) * hop_s * 16000 < SPEC.window_samples)
    new = int(round(hop_s * 16000)) // SPEC.frame_shift
    assert inc.frames_computed == (padded + 1) * SPEC.num_frames + (n - padded - 1) * new


def test_off_grid_hop_and_padded_windows_are_recomputed(rng: np.random.Generator):
    x = (0.1 * rng.standard_normal(16000 * 12)).astype(np.float32)
    inc = IncrementalFeatures(SPEC)
    padded = cyclic_pad(x[:40000], SPEC.window_samples)
    np.testing.assert_allclose(inc.compute(padded, 40000, 40000), compute_features(padded, SPEC), atol=1e-6)
    a = inc.compute(x[:128000], 128000)
    b = inc.compute(x[77:128077], 128077)  # 77 samples: off the 160-sample frame grid
    np.testing.assert_allclose(b, compute_features(x[77:128077], SPEC), atol=1e-6)
    assert inc.frames_reused == 0 and a.shape == SPEC.input_shape
    inc.reset()
    inc.compute(x[16000:144000], 144000)
    assert inc.frames_reused == 0


def test_wrong_window_length_is_a_typed_error():
    from stethoedge.runtime.errors import AudioError

    with pytest.raises(AudioError, match="128000 samples"):
        IncrementalFeatures(SPEC).compute(np.zeros(100, np.float32), 100)


@pytest.fixture(scope="module")
def icbhi_audio(request) -> np.ndarray:
    """25 s of a real ICBHI recording (44.1 kHz, resampled), or seeded noise with breathing-like bursts."""
    try:
        root = request.getfixturevalue("icbhi_dir")
    except pytest.skip.Exception:  # no real sample here: the exactness check still runs on noise
        root = None
    if root is not None:
        from stethoedge.runtime.audio_io import load_audio

        return load_audio(root / "audio_and_txt_files" / "101_1b1_Al_sc_Meditron.wav").samples[: 16000 * 25]
    g = np.random.default_rng(3)
    t = np.arange(16000 * 25) / 16000
    return (0.05 * g.standard_normal(t.size) * (1 + np.sin(2 * np.pi * 0.25 * t))).astype(np.float32)
