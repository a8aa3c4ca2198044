"""The push-mode streaming core (runtime/streaming.py): ``Classifier.streaming().feed(chunk)`` on the shipped
bundle and a real ICBHI recording gives the decisions of ``Classifier.classify`` whatever the chunking; gaps
restart the window and the smoothing; no threads; stream.py and engine.py no longer import each other."""
from __future__ import annotations

import ast
import threading
from pathlib import Path

import numpy as np
import pytest

from stethoedge.models import default_bundle
from stethoedge.runtime.audio_io import load_audio
from stethoedge.runtime.engine import Classifier
from stethoedge.runtime.errors import AudioError
from stethoedge.runtime.results import WindowResult
from stethoedge.runtime.smoothing import SmoothingConfig
from stethoedge.runtime.sources import ArraySource, AudioChunk, FileSource
from stethoedge.runtime.stream import StreamConfig, StreamEngine
from stethoedge.runtime.streaming import StreamingClassifier

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WAV = SHARED / "data" / "icbhi_sample" / "audio_and_txt_files" / "104_1b1_Al_sc_Litt3200.wav"  # 15.86 s at 4 kHz
needs_wav = pytest.mark.skipif(not WAV.is_file(), reason=f"ICBHI sample not found at {WAV}")

#: Fields that must be identical (timing fields left out: latency_ms, wall_time).
EXACT = ("start_s", "end_s", "padded", "after_gap", "label", "model_label", "smoothed_label", "quality",
         "abstained", "abstain_reason", "skipped_before", "warnings")


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier.open(default_bundle())


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return load_audio(WAV).samples  # resampled to 16 kHz


@pytest.fixture(scope="module")
def reference(clf: Classifier) -> list[WindowResult]:
    return list(clf.classify(FileSource(WAV)))


def _feed_all(core: StreamingClassifier, audio: np.ndarray, sizes: list[int]) -> list[WindowResult]:
    out: list[WindowResult] = []
    pos = 0
    for n in sizes:
        out += core.feed(audio[pos : pos + n])
        pos += n
    assert pos >= audio.size
    return out + core.flush()


def _chunk_sizes(kind: str, n: int) -> list[int]:
    if kind == "random":
        sizes = list(np.random.default_rng(7).integers(1, 20_000, n // 1000 + 1))
        while sum(sizes) < n:
            sizes.append(20_000)
        return [int(s) for s in sizes]
    size = {"1": 1, "37": 37, "0.5s": 8000, "whole": n}[kind]
    return [size] * -(-n // size)


def _same(a: list[WindowResult], b: list[WindowResult], abs_tol: float = 0.0) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in EXACT:
            assert getattr(x, key) == getattr(y, key), key
        assert x.probabilities == pytest.approx(y.probabilities, abs=abs_tol)
        assert x.confidence == pytest.approx(y.confidence, abs=abs_tol)
        assert x.smoothed_confidence == pytest.approx(y.smoothed_confidence, abs=abs_tol)
        if abs_tol == 0.0:
            assert x.quality_score == y.quality_score
        else:
            assert x.quality_score == pytest.approx(y.quality_score, abs=1e-4)


@pytest.fixture(scope="module")
def whole(clf: Classifier, audio: np.ndarray) -> list[WindowResult]:
    return _feed_all(clf.streaming(), audio, [audio.size])


@needs_wav
def test_feeding_the_whole_file_equals_classify_on_the_file(audio: np.ndarray, whole: list[WindowResult],
                                                            reference: list[WindowResult]) -> None:
    # 2, 4, ..., 14 s every hop, then the end of the stream (15.86 s) through flush().
    assert audio.size == 253_696
    assert [r.end_s for r in whole] == [2, 4, 6, 8, 10, 12, 14, audio.size / 16000]
    assert [r.padded for r in whole] == [True] * 3 + [False] * 5
    # FileSource resamples block by block, load_audio at once: the same samples within 1e-6.
    _same(whole, reference, abs_tol=1e-5)


@needs_wav
@pytest.mark.parametrize("kind", ["1", "37", "0.5s", "random"])
def test_any_chunking_gives_exactly_the_same_decisions(kind: str, clf: Classifier, audio: np.ndarray,
                                                       whole: list[WindowResult]) -> None:
    core = clf.streaming()
    got = _feed_all(core, audio, _chunk_sizes(kind, audio.size))
    _same(got, whole)  # bit for bit: the windows and their features do not depend on the chunking
    assert core.stats.samples_in == audio.size and core.stats.windows == len(got)
    assert core.stats.frames_reused > 0  # the incremental features were used, chunking or not


@needs_wav
def test_reset_and_flush_start_a_new_stream_with_the_same_results(clf: Classifier, audio: np.ndarray,
                                                         whole: list[WindowResult]) -> None:
    core = clf.streaming()
    core.feed(audio[:50_000])
    core.reset()
    _same(_feed_all(core, audio, [8000] * -(-audio.size // 8000)), whole)
    _same(_feed_all(core, audio, [audio.size]), whole)  # flush() ended that stream: this one starts afresh


@needs_wav
def test_a_gap_restarts_the_window_and_the_smoothing_as_the_engine_does(clf: Classifier, audio: np.ndarray) -> None:
    class Gappy:
        sample_rate, live = 16000, False

        def chunks(self):
            yield AudioChunk(audio[:64000], 0)
            yield AudioChunk(audio[80000:160000], 80000, gap_before=16000)

        def close(self) -> None:
            pass

    smoothing = SmoothingConfig("mean", 3)
    engine = StreamEngine(clf, StreamConfig(hop_s=2.0, smoothing=smoothing))
    expected = list(engine.run(Gappy()))
    assert [r.end_s for r in expected] == pytest.approx([2, 4, 7, 9, 10])

    core = clf.streaming(smoothing=smoothing)
    got = core.feed(audio[:64000]) + core.feed(audio[80000:160000], start_sample=80000) + core.flush()
    _same(got, expected)
    assert [r.after_gap for r in got] == [False, False, True, False, False]
    assert got[2].smoothed_label == got[2].model_label  # history reset at the gap
    assert got[2].smoothed_confidence == pytest.approx(got[2].confidence)
    assert (core.stats.gaps, core.stats.samples_lost) == (engine.stats.gaps, engine.stats.samples_lost) == (1, 16000)

    # gap=True without a position: the same restart, stream time goes on from the last sample, nothing counted lost.
    core = clf.streaming(smoothing=smoothing)
    marked = core.feed(audio[:64000]) + core.feed(audio[80000:160000], gap=True) + core.flush()
    assert [r.end_s for r in marked] == pytest.approx([2, 4, 6, 8, 9])
    assert [r.after_gap for r in marked] == [False, False, True, False, False]
    assert [r.probabilities for r in marked] == [r.probabilities for r in got]
    assert [r.smoothed_label for r in marked] == [r.smoothed_label for r in got]
    assert (core.stats.gaps, core.stats.samples_lost) == (1, 0)

    # Without the gap the third window is smoothed with the two before it: the reset is what changed it.
    core = clf.streaming(smoothing=smoothing)
    joined = core.feed(np.concatenate([audio[:64000], audio[80000:160000]])) + core.flush()
    assert not joined[2].after_gap and joined[2].probabilities != got[2].probabilities


@needs_wav
def test_feed_creates_no_threads(clf: Classifier, audio: np.ndarray) -> None:
    before = set(threading.enumerate())
    seen: list[int] = []

    def run(features: np.ndarray) -> np.ndarray:
        seen.append(threading.active_count())
        return clf.backend.run(features)

    core = StreamingClassifier(run, clf.bundle.labels, clf.spec, calibration=clf.bundle.calibration,
                               gate=clf.bundle.quality)
    for start in range(0, audio.size, 4000):
        core.feed(audio[start : start + 4000])
        assert set(threading.enumerate()) == before
    core.flush()
    assert len(seen) == 8 and set(seen) == {len(before)} and set(threading.enumerate()) == before


def test_short_streams_and_the_end_of_the_stream(clf: Classifier) -> None:
    x = (0.05 * np.random.default_rng(3).standard_normal(16000)).astype(np.float32)  # 1 s: under min_s
    core = clf.streaming()
    assert core.feed(x) == []  # nothing due before min_s
    (tail,) = core.flush()
    (expected,) = clf.classify(ArraySource(x))
    assert (tail.start_s, tail.end_s, tail.padded) == (0.0, 1.0, True)
    assert tail.probabilities == expected.probabilities and tail.label == expected.label
    assert core.flush() == []  # the stream ended with the first flush

    core = clf.streaming()
    core.feed(x[:1600])  # 0.1 s: under MIN_AUDIO_SECONDS, no decision at all
    assert core.flush() == []
    core.feed(x[:1600])
    with pytest.raises(AudioError, match=r"^rec\.wav: only 0\.1000 s of audio"):
        core.flush(require_decision=True, name="rec.wav")
    with pytest.raises(AudioError, match="only 0.1000 s"):
        list(clf.classify(ArraySource(x[:1600])))


def test_feed_rejects_what_it_cannot_classify(clf: Classifier) -> None:
    core = clf.streaming()
    with pytest.raises(AudioError, match="1-D"):
        core.feed(np.zeros((100, 2), np.float32))
    with pytest.raises(AudioError, match="int16"):
        core.feed(np.zeros(100, np.int16))
    with pytest.raises(AudioError, match="NaN"):
        core.feed(np.array([0.0, np.nan], np.float32))
    core.feed(np.zeros(100, np.float32), start_sample=1000)  # the first chunk sets the origin: no gap
    assert core.stats.gaps == 0
    with pytest.raises(AudioError, match="before the end"):
        core.feed(np.zeros(10, np.float32), start_sample=1050)
    with pytest.raises(ValueError, match="hop must be positive"):
        clf.streaming(hop_s=0)


def _imports(path: Path) -> set[str]:
    """Every module imported anywhere in ``path`` (top level, functions, TYPE_CHECKING blocks)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_stream_engine_and_the_classifier_no_longer_import_each_other() -> None:
    runtime = ROOT / "runtime"
    engine = "stethoedge.runtime.engine"
    for name in ("stream", "streaming", "results"):
        assert engine not in _imports(runtime / f"{name}.py"), f"runtime/{name}.py imports runtime/engine.py"
    # The core and the results know nothing of the threaded driver, the classifier, threads, torch or training.
    for name in ("streaming", "results"):
        got = _imports(runtime / f"{name}.py")
        assert not got & {"stethoedge.runtime.stream", engine, "threading", "torch"}, name
        assert not any(m.startswith(("stethoedge.train", "stethoedge.export", "train", "export")) for m in got), name
    # One way only: engine.py (Classifier.classify) drives stream.py, which never reaches back.
    assert "stethoedge.runtime.stream" in _imports(runtime / "engine.py")
