"""Cyclic padding (shared by training and the device) and the sliding windower."""
from __future__ import annotations

import numpy as np
import pytest

from stethoedge.runtime.errors import AudioError
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.runtime.sources import AudioChunk, ArraySource
from stethoedge.runtime.windowing import SlidingWindower


def test_cyclic_pad_repeats_and_cuts():
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(cyclic_pad(x, 8), [0, 1, 2, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(cyclic_pad(np.arange(10, dtype=np.float32), 4), [0, 1, 2, 3])
    assert cyclic_pad(x, 3).dtype == np.float32


def test_cyclic_pad_rejects_empty_and_2d():
    with pytest.raises(AudioError, match="empty"):
        cyclic_pad(np.zeros(0), 10)
    with pytest.raises(AudioError, match="1-D"):
        cyclic_pad(np.zeros((2, 2)), 10)


def test_training_and_device_use_the_same_padding():
    """The trainer pads with this very function (no second implementation)."""
    import stethoedge.calibration.window_set as ws
    import stethoedge.train.dataset as ds

    assert ds.cyclic_pad is cyclic_pad and ws.cyclic_pad is cyclic_pad


def _windows(samples: np.ndarray, window: int, hop: int, min_samples: int, chunk: int) -> list:
    w = SlidingWindower(window, hop, min_samples)
    out = []
    for c in ArraySource(samples, chunk_seconds=chunk / 16000).chunks():
        out.extend(w.push(c))
    tail = w.flush()
    return out + ([tail] if tail is not None else [])


@pytest.mark.parametrize("chunk", [7, 100, 1000, 5000])
def test_windows_are_the_last_window_samples_whatever_the_chunking(chunk):
    x = np.arange(3000, dtype=np.float32)
    wins = _windows(x, window=800, hop=200, min_samples=200, chunk=chunk)
    ends = [w.end_sample for w in wins]
    assert ends[:-1] == list(range(200, 3001, 200))[: len(ends) - 1]
    for w in wins:
        real = x[max(0, w.end_sample - 800) : w.end_sample]
        assert w.available == real.shape[0]
        np.testing.assert_array_equal(w.audio, cyclic_pad(real, 800))


def test_tail_and_short_stream_get_a_window():
    wins = _windows(np.ones(950, np.float32), window=800, hop=200, min_samples=400, chunk=100)
    assert [w.end_sample for w in wins] == [400, 600, 800, 950]
    short = _windows(np.ones(150, np.float32), window=800, hop=200, min_samples=400, chunk=100)
    assert len(short) == 1 and short[0].available == 150 and short[0].audio.shape == (800,)


def test_gap_restarts_the_window_and_is_counted():
    w = SlidingWindower(800, 200, 200)
    first = list(w.push(AudioChunk(np.ones(400, np.float32), 0)))
    after = list(w.push(AudioChunk(np.full(400, 2.0, np.float32), 1400, gap_before=1000)))
    assert len(first) == 2 and len(after) == 2
    assert after[0].after_gap and not after[1].after_gap
    assert np.all(after[0].audio == 2.0), "audio from before the gap must not be spliced in"
    assert w.gaps == 1 and w.samples_lost == 1000
    assert after[-1].end_sample == 1800
