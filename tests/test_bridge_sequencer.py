"""AudioSequencer: gaps, duplicates, reordering, restarts, wrap-around, resampling."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stethoedge.firmware_bridge.messages import Audio
from stethoedge.firmware_bridge.sequencer import AudioSequencer
from stethoedge.runtime.sources import AudioChunk

N = 256


def signal(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n).astype(np.int16)


def frames_of(pcm: np.ndarray, rate: int = 16000, n: int = N, first_index: int = 0, first_seq: int = 0):
    out = []
    for k, start in enumerate(range(0, pcm.shape[0], n)):
        msg = Audio.from_pcm16(pcm[start : start + n], first_index + start, rate)
        out.append(((first_seq + k) & 0xFFFF, msg))
    return out


def run(seq_msgs, seq: AudioSequencer | None = None, arrival=None) -> tuple[list[AudioChunk], AudioSequencer]:
    seq = seq or AudioSequencer()
    chunks = []
    for i, (s, msg) in enumerate(seq_msgs):
        seq.note_seq(s)
        chunks += seq.push(s, msg, None if arrival is None else arrival(i))
    chunks += seq.flush()
    return chunks, seq


def check_never_invented(chunks: list[AudioChunk], pcm: np.ndarray, offset: int = 0) -> None:
    """Every delivered sample is the original sample at that stream position; positions add up."""
    pos = chunks[0].start_sample if chunks else 0
    for c in chunks:
        assert c.start_sample == pos + c.gap_before
        assert c.samples.dtype == np.float32
        idx = c.start_sample - offset
        assert np.array_equal(c.samples, pcm[idx : idx + c.samples.shape[0]].astype(np.float32) / 32768)
        pos = c.start_sample + c.samples.shape[0]


def test_contiguous_stream():
    pcm = signal(N * 10 + 17)
    chunks, seq = run(frames_of(pcm))
    assert all(c.gap_before == 0 for c in chunks)
    check_never_invented(chunks, pcm)
    assert seq.stats.samples == pcm.shape[0] and seq.stats.gaps == 0 and seq.stats.frames_lost == 0


def test_device_sample_index_does_not_need_to_start_at_zero():
    pcm = signal(N * 3)
    chunks, _ = run(frames_of(pcm, first_index=123456, first_seq=900))
    assert chunks[0].start_sample == 0
    check_never_invented(chunks, pcm)


def test_lost_frames_become_gaps_and_no_audio_is_invented():
    pcm = signal(N * 12)
    msgs = frames_of(pcm)
    kept = [m for i, m in enumerate(msgs) if i not in (3, 7, 8)]
    chunks, seq = run(kept)
    assert [c.gap_before for c in chunks if c.gap_before] == [N, 2 * N]
    check_never_invented(chunks, pcm)
    st = seq.stats
    assert (st.gaps, st.samples_lost, st.frames_lost) == (2, 3 * N, 3)
    assert st.samples + st.samples_lost == pcm.shape[0]


def test_duplicates_dropped_and_counted():
    pcm = signal(N * 6)
    msgs = frames_of(pcm)
    chunks, seq = run(msgs[:3] + [msgs[2], msgs[1]] + msgs[3:] + [msgs[5]])
    check_never_invented(chunks, pcm)
    assert seq.stats.duplicates == 3 and seq.stats.late_frames == 0
    assert seq.stats.gaps == 0 and seq.stats.samples == pcm.shape[0]


def test_reordered_frames_late_one_dropped_gap_reported():
    pcm = signal(N * 6)
    msgs = frames_of(pcm)
    order = [0, 1, 3, 2, 4, 5]
    chunks, seq = run([msgs[i] for i in order])
    check_never_invented(chunks, pcm)
    st = seq.stats
    assert (st.late_frames, st.duplicates, st.gaps, st.samples_lost) == (1, 0, 1, N)
    assert st.frames_lost == 0  # frame 2 did arrive, just too late


def test_partial_overlap_is_trimmed():
    pcm = signal(N * 3)
    a = Audio.from_pcm16(pcm[:N], 0, 16000)
    b = Audio.from_pcm16(pcm[N - 10 : 2 * N], N - 10, 16000)  # repeats 10 samples
    chunks, seq = run([(0, a), (1, b)])
    check_never_invented(chunks, pcm)
    assert seq.stats.overlap_samples == 10 and seq.stats.samples == 2 * N


def test_sample_index_and_seq_wrap_around():
    pcm = signal(N * 8)
    msgs = frames_of(pcm, first_index=2**32 - 3 * N, first_seq=65533)
    assert msgs[4][1].sample_index == N  # the u32 counter wrapped
    chunks, seq = run(msgs[:5] + msgs[6:])
    check_never_invented(chunks, pcm)
    assert seq.stats.gaps == 1 and seq.stats.samples_lost == N and seq.stats.frames_lost == 1
    assert seq.stats.restarts == 0


def test_device_restart_is_a_discontinuity_with_estimated_gap():
    pcm = signal(N * 4)
    first = frames_of(pcm[: 2 * N])
    again = frames_of(pcm[2 * N :])  # sample index and seq start over at 0
    seq = AudioSequencer()
    arrivals = [0.0, 0.016, 10.016, 10.032]
    chunks = []
    for i, (s, msg) in enumerate(first + again):
        if i == 2:
            seq.restart()  # what a HELLO does
        seq.note_seq(s)
        chunks += seq.push(s, msg, arrivals[i])
    assert seq.stats.restarts == 1
    gap = [c.gap_before for c in chunks if c.gap_before]
    assert len(gap) == 1 and abs(gap[0] - (10.0 * 16000 - N)) <= 1
    assert sum(c.samples.shape[0] for c in chunks) == pcm.shape[0]


def test_far_backwards_jump_without_hello_is_a_restart():
    pcm = signal(N * 4)
    msgs = frames_of(pcm, first_index=16000 * 60)
    back = Audio.from_pcm16(pcm[:N], 0, 16000)  # device counter reset to 0, 60 s behind
    chunks, seq = run(msgs + [(4, back)])
    assert seq.stats.restarts == 1 and seq.stats.late_frames == 0
    assert chunks[-1].gap_before >= 1


def test_last_flag_ends_the_stream():
    pcm = signal(N * 2)
    a = Audio.from_pcm16(pcm[:N], 0, 16000, last=True)
    b = Audio.from_pcm16(pcm[N:], 0, 16000)
    chunks, seq = run([(0, a), (1, b)])
    assert seq.stats.restarts == 1 and seq.stats.duplicates == seq.stats.late_frames == 0
    assert chunks[1].gap_before >= 1


def test_repeated_last_frame_is_a_duplicate_not_a_new_stream():
    pcm = signal(N * 2)
    a = Audio.from_pcm16(pcm[:N], 0, 16000)
    b = Audio.from_pcm16(pcm[N:], N, 16000, last=True)
    chunks, seq = run([(0, a), (1, b), (1, b)])
    check_never_invented(chunks, pcm)
    assert seq.stats.duplicates == 1 and seq.stats.restarts == 0 and seq.stats.samples == 2 * N


def test_other_device_rate_is_resampled_to_16k_without_edge_artifacts():
    rate = 8000
    t = np.arange(rate * 2) / rate
    pcm = (np.sin(2 * np.pi * 300 * t) * 12000).astype(np.int16)
    chunks, seq = run(frames_of(pcm, rate=rate, n=160))
    out = np.concatenate([c.samples for c in chunks])
    assert all(c.gap_before == 0 for c in chunks)
    assert abs(out.shape[0] - 2 * pcm.shape[0]) <= 2
    ref = np.sin(2 * np.pi * 300 * np.arange(out.shape[0]) / 16000) * 12000 / 32768
    # soxr's streaming resampler compensates its delay and, unlike resampling each 10 ms frame
    # on its own (edge transients of ~6e-3 here), leaves only quantisation-level error.
    mid = slice(1000, out.shape[0] - 1000)
    assert np.max(np.abs(out[mid] - ref[mid])) < 1e-3


def test_gap_at_other_rate_is_converted_to_16k_samples():
    rate = 8000
    pcm = signal(160 * 10)
    msgs = frames_of(pcm, rate=rate, n=160)
    chunks, seq = run(msgs[:4] + msgs[5:])
    assert seq.stats.gaps == 1 and seq.stats.samples_lost == 320
    assert [c.gap_before for c in chunks if c.gap_before] == [320]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["ok", "ok", "ok", "drop", "dup", "swap"]), min_size=1, max_size=40))
def test_property_never_invents_audio_and_accounts_for_every_sample(plan):
    pcm = signal(N * (len(plan) + 1), seed=len(plan))
    msgs = frames_of(pcm)
    sent = []
    i = 0
    for action in plan:
        if i >= len(msgs):
            break
        if action == "drop":
            i += 1
        elif action == "dup":
            sent += [msgs[i], msgs[i]]
            i += 1
        elif action == "swap" and i + 1 < len(msgs):
            sent += [msgs[i + 1], msgs[i]]
            i += 2
        else:
            sent.append(msgs[i])
            i += 1
    chunks, seq = run(sent)
    if not chunks:
        return
    first = next(m.sample_index for _, m in sent)
    check_never_invented(chunks, pcm, offset=-first)
    end = chunks[-1].start_sample + chunks[-1].samples.shape[0]
    assert seq.stats.samples + seq.stats.samples_lost == end
    assert seq.stats.restarts == 0
    delivered = {m.sample_index for _, m in sent}
    assert seq.stats.audio_frames == len({m.sample_index for _, m in sent}) - seq.stats.late_frames
    assert seq.stats.duplicates == len(sent) - len(delivered)
