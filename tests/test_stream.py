"""The stream engine: ring buffer, threaded capture, skipping when behind, streamed file replay."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stethoedge.runtime.audio_io import load_audio
from stethoedge.runtime.engine import Classifier
from stethoedge.runtime.errors import AudioError
from stethoedge.runtime.ring_buffer import SampleRing
from stethoedge.runtime.smoothing import SmoothingConfig
from stethoedge.runtime.sources import ArraySource, AudioChunk, FileSource
from stethoedge.runtime.stream import StreamConfig, StreamEngine


@pytest.fixture(scope="module")
def clf(bundle_dir: Path) -> Classifier:
    return Classifier.open(bundle_dir, allow_degraded=True)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    g = np.random.default_rng(5)
    t = np.arange(16000 * 20) / 16000
    return (0.1 * g.standard_normal(t.size) * (1.2 + np.sin(2 * np.pi * 0.3 * t))).astype(np.float32)


class PacedSource(ArraySource):
    """A live source: an array delivered at ``speed`` x real time from its own thread's pace."""

    live = True

    def __init__(self, samples: np.ndarray, speed: float, chunk_seconds: float = 0.1) -> None:
        super().__init__(samples, chunk_seconds=chunk_seconds)
        self.speed = speed

    def chunks(self):
        t0 = time.monotonic()
        for chunk in super().chunks():
            delay = t0 + chunk.start_sample / 16000 / self.speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield chunk


class SlowBackend:
    """The real ONNX Runtime backend, made slower than the hop (as on an overloaded Pi)."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s, self.name, self.artifact = inner, delay_s, inner.name, inner.artifact

    def run(self, features: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return self.inner.run(features)


def test_ring_keeps_order_and_turns_overflow_into_a_gap():
    ring = SampleRing(100)
    assert ring.write(np.arange(60)) == 60
    first = ring.read(0)
    assert len(first) == 1 and first[0].start_sample == 0 and np.array_equal(first[0].samples, np.arange(60))
    ring.write(np.arange(60, 120))
    assert ring.write(np.arange(120, 180)) == 40  # 20 samples do not fit
    assert ring.stats.overflows == 1 and ring.stats.samples_dropped == 20
    assert [c.start_sample for c in ring.read(0)] == [60]
    ring.write(np.arange(180, 190))
    (after,) = ring.read(0)
    assert after.start_sample == 180 and after.gap_before == 20 and after.samples[0] == 180
    assert ring.read(0.01) == [] and ring.stats.underflows >= 1


def test_blocking_ring_write_waits_for_the_reader_and_drops_nothing():
    import threading

    ring = SampleRing(1000)
    data = np.arange(50_000, dtype=np.float32)
    writer = threading.Thread(target=lambda: (ring.write(data, block=True), ring.close()))
    writer.start()
    got = []
    while not (ring.closed and len(ring) == 0):
        got.extend(c.samples for c in ring.read(0.05))
    writer.join()
    assert np.array_equal(np.concatenate(got), data) and ring.stats.samples_dropped == 0


def test_threaded_incremental_engine_equals_direct_recomputation(clf: Classifier, audio: np.ndarray):
    plain = StreamConfig(hop_s=1.0, incremental=False, threaded=False)
    fast = StreamConfig(hop_s=1.0, incremental=True, threaded=True)
    a = list(StreamEngine(clf, plain).run(ArraySource(audio)))
    eng = StreamEngine(clf, fast)
    b = list(eng.run(ArraySource(audio, chunk_seconds=0.37)))
    assert [r.end_s for r in a] == [r.end_s for r in b] == pytest.approx([2.0 + k for k in range(19)])
    for x, y in zip(a, b):
        assert x.label == y.label
        assert x.probabilities == pytest.approx(y.probabilities, abs=1e-5)
    assert eng.stats.samples_in == audio.size and eng.stats.ring_samples_dropped == 0
    assert eng.stats.frames_reused > eng.stats.frames_computed


def test_slow_inference_skips_windows_but_never_capture(clf: Classifier, audio: np.ndarray):
    slow = Classifier(clf.bundle, SlowBackend(clf.backend, 0.25))
    # 20 s at 10x real time: a 1 s hop arrives every 0.1 s, inference takes 0.25 s.
    eng = StreamEngine(slow, StreamConfig(hop_s=1.0, max_lag_s=1.0))
    results = list(eng.run(PacedSource(audio, speed=10.0)))
    s = eng.stats
    assert s.windows_skipped > 0 and s.windows == len(results)
    assert s.windows + s.windows_skipped == 19  # every due window was either classified or counted
    assert sum(r.skipped_before for r in results) == s.windows_skipped
    assert s.samples_in == audio.size and s.ring_samples_dropped == 0 and s.gaps == 0


def test_gaps_restart_windows_and_reset_smoothing(clf: Classifier, audio: np.ndarray):
    class Gappy:
        sample_rate, live = 16000, False

        def chunks(self):
            yield AudioChunk(audio[:64000], 0)
            yield AudioChunk(audio[80000:160000], 80000, gap_before=16000)

        def close(self):
            pass

    eng = StreamEngine(clf, StreamConfig(hop_s=2.0, smoothing=SmoothingConfig("mean", 3)))
    results = list(eng.run(Gappy()))
    assert [r.end_s for r in results] == pytest.approx([2, 4, 7, 9, 10])
    assert [r.after_gap for r in results] == [False, False, True, False, False]
    assert results[2].smoothed_label == results[2].label  # history reset at the gap
    assert eng.stats.gaps == 1 and eng.stats.samples_lost == 16000


def test_file_replay_is_streamed_and_equals_whole_file_decoding(tmp_path: Path, rng: np.random.Generator):
    x = (0.2 * rng.standard_normal((44100 * 5 + 123, 2))).astype(np.float32)
    wav = tmp_path / "stereo44k.wav"
    sf.write(wav, x, 44100, subtype="PCM_24")
    src = FileSource(wav, chunk_seconds=0.25)
    chunks = list(src.chunks())
    assert max(c.samples.size for c in chunks) <= 1.1 * 0.25 * 16000 + 400  # blocks (+ the resampler flush)
    streamed = np.concatenate([c.samples for c in chunks])
    whole = load_audio(wav).samples
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    assert [c.start_sample for c in chunks] == list(np.cumsum([0] + [c.samples.size for c in chunks[:-1]]))


def test_realtime_replay_is_paced(tmp_path: Path):
    wav = tmp_path / "short.wav"
    sf.write(wav, np.zeros(8000, np.float32), 16000)
    t0 = time.monotonic()
    list(FileSource(wav, realtime=True, chunk_seconds=0.1).chunks())
    assert 0.4 <= time.monotonic() - t0 < 2.0


def test_nan_in_the_middle_of_a_file_is_a_typed_error(tmp_path: Path, clf: Classifier):
    x = np.zeros(16000 * 4)
    x[16000 * 3] = np.nan
    wav = tmp_path / "nan.wav"
    sf.write(wav, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        list(clf.classify(FileSource(wav)))


def test_json_record_has_stream_and_wall_time(clf: Classifier, audio: np.ndarray):
    r = next(iter(clf.classify(ArraySource(audio))))
    rec = r.to_json()
    for key in ("wall_time", "start_s", "end_s", "probabilities", "label", "smoothed_label", "latency_ms"):
        assert key in rec
    assert abs(rec["wall_time"] - time.time()) < 60 and rec["latency_ms"] > 0
