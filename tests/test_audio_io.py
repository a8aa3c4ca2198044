"""WAV decoding for every format users have, real ICBHI files included, and clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stethoedge.runtime.audio_io import load_audio, write_wav
from stethoedge.runtime.errors import AudioError


def _tone(rate: int, freq: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float64)


def _band_rms(x: np.ndarray, rate: int, freq: float) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    f = np.fft.rfftfreq(x.size, 1 / rate)
    return float(spec[np.abs(f - freq) < 20].max() / spec.max())


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_every_bit_depth_decodes_to_the_same_tone(tmp_path: Path, subtype: str):
    path = tmp_path / f"tone_{subtype}.wav"
    sf.write(path, _tone(16000, 440.0), 16000, subtype=subtype)
    audio = load_audio(path)
    assert audio.sample_rate == 16000 and audio.samples.dtype == np.float32
    tol = 1e-2 if subtype == "PCM_U8" else 1e-4
    np.testing.assert_allclose(audio.samples, _tone(16000, 440.0), atol=tol)


@pytest.mark.parametrize("rate", [4000, 8000, 11025, 22050, 44100, 48000, 96000, 192000])
def test_rates_resample_to_16k_with_the_right_length_and_pitch(tmp_path: Path, rate: int):
    path = tmp_path / f"r{rate}.wav"
    sf.write(path, _tone(rate, 300.0, 2.0), rate, subtype="PCM_16")
    audio = load_audio(path)
    assert abs(audio.samples.size - 32000) <= 2
    peak = np.fft.rfftfreq(audio.samples.size, 1 / 16000)[np.argmax(np.abs(np.fft.rfft(audio.samples)))]
    assert abs(peak - 300.0) < 2.0


def test_resampler_is_anti_aliased(tmp_path: Path):
    """A 12 kHz tone at 48 kHz is above the new 8 kHz Nyquist: it must vanish, not fold to 4 kHz."""
    path = tmp_path / "alias.wav"
    sf.write(path, _tone(48000, 12000.0) + _tone(48000, 500.0), 48000, subtype="FLOAT")
    out = load_audio(path).samples
    assert _band_rms(out, 16000, 4000.0) < 1e-3
    assert _band_rms(out, 16000, 500.0) > 0.5


def test_stereo_and_six_channels_are_downmixed(tmp_path: Path):
    left, right = _tone(16000, 200.0), _tone(16000, 900.0)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), 16000, subtype="PCM_24")
    audio = load_audio(tmp_path / "st.wav")
    assert audio.source_channels == 2
    np.testing.assert_allclose(audio.samples, (left + right) / 2, atol=1e-4)
    sf.write(tmp_path / "six.wav", np.tile(left[:, None], (1, 6)), 16000, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(tmp_path / "six.wav").samples, left, atol=1e-4)


def test_real_icbhi_formats(icbhi_dir: Path):
    files = icbhi_dir / "audio_and_txt_files"
    meditron = load_audio(files / "101_1b1_Al_sc_Meditron.wav")  # 44.1 kHz, 24-bit
    assert meditron.source_rate == 44100 and meditron.source_subtype == "PCM_24"
    assert abs(meditron.duration_s - 20.0) < 1e-3
    litt = load_audio(files / "104_1b1_Al_sc_Litt3200.wav")  # 4 kHz, 16-bit
    assert litt.source_rate == 4000 and litt.source_subtype == "PCM_16"
    assert abs(litt.samples.size - sf.info(files / "104_1b1_Al_sc_Litt3200.wav").frames * 4) <= 4
    pcm32 = load_audio(icbhi_dir / "variant_pcm32" / "101_1b1_Al_sc_Meditron.wav")
    assert pcm32.source_subtype == "PCM_32"
    # the 32-bit file is the 24-bit one x 256 (+-255 LSB): identical after scaling to [-1, 1]
    np.testing.assert_allclose(pcm32.samples, meditron.samples, atol=1e-5)


def test_clipping_and_dc_warn_but_load(tmp_path: Path):
    x = np.clip(_tone(16000, 300.0, amp=3.0), -1, 1) + 0.0
    sf.write(tmp_path / "clip.wav", x, 16000, subtype="PCM_16")
    audio = load_audio(tmp_path / "clip.wav")
    assert any("clipped" in w for w in audio.warnings)
    sf.write(tmp_path / "dc.wav", _tone(16000, 300.0, amp=0.2) + 0.3, 16000, subtype="FLOAT")
    assert any("DC offset" in w for w in load_audio(tmp_path / "dc.wav").warnings)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"this is not audio at all, just text" * 10), "not a readable audio file"),
        (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt "), "not a readable audio file"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
    ids=["empty", "not-a-wav", "truncated-header", "directory"],
)
def test_bad_files_raise_one_clear_error(tmp_path: Path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=message):
        load_audio(path)


def test_missing_file_and_nan(tmp_path: Path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nope.wav")
    x = _tone(16000, 300.0)
    x[100] = np.nan
    x[200] = np.inf
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="2 samples are NaN or infinite"):
        load_audio(tmp_path / "nan.wav")


def test_header_with_no_samples(tmp_path: Path):
    sf.write(tmp_path / "zero.wav", np.zeros(0), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(tmp_path / "zero.wav")


def test_rate_out_of_range(tmp_path: Path):
    sf.write(tmp_path / "slow.wav", np.zeros(100), 2000, subtype="PCM_16")
    with pytest.raises(AudioError, match="outside 4000-192000"):
        load_audio(tmp_path / "slow.wav")


def test_write_wav_is_atomic_and_round_trips(tmp_path: Path):
    x = _tone(16000, 440.0).astype(np.float32)
    path = write_wav(tmp_path / "out.wav", x, 16000)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]
    np.testing.assert_allclose(load_audio(path).samples, x, atol=1e-4)


def test_streamed_file_source_reports_clipping_dc_and_reads_a_truncated_file(tmp_path):
    """FileSource decodes in blocks and still collects the quality warnings load_audio gives."""
    import numpy as np
    import soundfile as sf

    from stethoedge.runtime.sources import FileSource

    x = np.full(16000 * 2, 0.3)
    x[::50] = 1.0
    wav = tmp_path / "clip_dc.wav"
    sf.write(wav, x, 16000, subtype="PCM_16")
    src = FileSource(wav, chunk_seconds=0.1)
    assert sum(c.samples.size for c in src.chunks()) == x.size
    assert any("full scale" in w for w in src.warnings) and any("DC offset" in w for w in src.warnings)
    data = wav.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    src = FileSource(cut)
    got = sum(c.samples.size for c in src.chunks())
    # libsndfile sizes a truncated data chunk from the file length: what is there is decoded, no error
    assert 0 < got < x.size
