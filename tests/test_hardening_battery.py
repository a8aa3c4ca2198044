"""The bad-input battery: one table row per input and its expected verdict, run against the CLI and the API.

Six tables: audio files, bundles/manifests, command-line arguments, output targets, serial
streams on a real pseudo-terminal, and dataset folders (ICBHI and SPRSound layouts). A verdict is

- ``ok``: classified (exit 0), no warning;
- ``warn:<text>``: classified (exit 0), with one warning containing ``<text>``;
- ``error:<text>``: refused with one ``error: ...`` line containing ``<text>`` and exit code 2 from
  the CLI, a ``StethoedgeError`` whose one-line message contains ``<text>`` from the API; never a
  traceback, and no output file is published.

The CLI is run in-process (``stethoedge.cli.main``: the same code path as the console script,
without a new interpreter per row); tests/test_hardening_inputs.py, test_output_safety.py and
test_cli_inputs.py run the console script itself for the cases where the process matters.
docs/RELIABILITY.md lists the tables' sizes.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf

from stethoedge.cli import main
from stethoedge.models import default_bundle
from stethoedge.runtime.bundle import load_bundle, sha256_file
from stethoedge.runtime.engine import Classifier
from stethoedge.runtime.errors import StethoedgeError
from stethoedge.runtime.sources import FileSource

REPO = Path(__file__).resolve().parents[1]
RATE = 16000


@dataclass(frozen=True)
class Row:
    """One input of the battery: how to make it and what must happen to it."""

    id: str
    make: Callable[[Path], Path]
    verdict: str  # "ok" | "warn:<text>" | "error:<text>"

    @property
    def kind(self) -> str:
        return self.verdict.split(":", 1)[0]

    @property
    def text(self) -> str:
        return self.verdict.split(":", 1)[1] if ":" in self.verdict else ""


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_cli_verdict(row: Row, code: int, err: str) -> None:
    assert "Traceback" not in err, err
    if row.kind == "error":
        assert code == 2, f"{row.id}: exit {code}\n{err}"
        lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
        assert len(lines) == 1, err
        assert row.text.lower() in lines[0].lower(), f"{row.id}: {lines[0]!r} lacks {row.text!r}"
    else:
        assert code == 0, f"{row.id}: exit {code}\n{err}"
        warnings = [line for line in err.splitlines() if line.lower().startswith("warning")]
        if row.kind == "warn":
            assert any(row.text.lower() in w.lower() for w in warnings), f"{row.id}: no warning with {row.text!r}: {err}"
        else:
            assert not warnings, f"{row.id}: unexpected warning {warnings}"


# ------------------------------------------------------------------ audio files
def _tone(seconds: float, rate: int = RATE, channels: int = 1, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = level * np.sin(2 * np.pi * 440 * t) * (1 + 0.3 * np.sin(2 * np.pi * 0.3 * t)) / 1.3
    x = x + 0.02 * np.random.default_rng(0).standard_normal(x.shape[0])
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def _write(name: str, data: np.ndarray, rate: int = RATE, subtype: str | None = None, fmt: str | None = None):
    def make(tmp: Path) -> Path:
        p = tmp / name
        sf.write(str(p), data, rate, subtype=subtype, format=fmt)
        return p
    return make


def _bytes(name: str, data: bytes | Callable[[], bytes]):
    def make(tmp: Path) -> Path:
        p = tmp / name
        p.write_bytes(data() if callable(data) else data)
        return p
    return make


def _wav_bytes(seconds: float = 3.0, rate: int = RATE, subtype: str = "PCM_16") -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, _tone(seconds, rate), rate, subtype=subtype, format="WAV")
    return buf.getvalue()


def _sizes(riff: int, data: int) -> Callable[[], bytes]:
    """A PCM16 WAV whose RIFF and data sizes are overwritten (a recorder killed before finalising)."""
    def make() -> bytes:
        b = bytearray(_wav_bytes(3.0))
        b[4:8] = struct.pack("<I", riff)
        k = b.index(b"data")
        b[k + 4 : k + 8] = struct.pack("<I", data)
        return bytes(b)
    return make


def _with_chunk(chunk_id: bytes, payload: bytes) -> Callable[[], bytes]:
    """A WAV with an extra chunk (LIST/INFO metadata, a vendor chunk) before its data."""
    def make() -> bytes:
        b = _wav_bytes(3.0)
        k = b.index(b"data")
        extra = chunk_id + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")
        out = bytearray(b[:k] + extra + b[k:])
        out[4:8] = struct.pack("<I", len(out) - 8)
        return bytes(out)
    return make


def _half(name: str, fmt: str, subtype: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        full = tmp / f"full-{name}"
        sf.write(str(full), _tone(6.0), RATE, format=fmt, subtype=subtype)
        p = tmp / name
        data = full.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return p
    return make


def _link(name: str, to: str, target: Callable[[Path], Path] | None = None):
    def make(tmp: Path) -> Path:
        if target is not None:
            target(tmp)
        p = tmp / name
        p.symlink_to(tmp / to)
        return p
    return make


def _loop(tmp: Path) -> Path:
    (tmp / "loop-a.wav").symlink_to(tmp / "loop-b.wav")
    (tmp / "loop-b.wav").symlink_to(tmp / "loop-a.wav")
    return tmp / "loop-a.wav"


def _fifo(tmp: Path) -> Path:
    p = tmp / "pipe.wav"
    os.mkfifo(p)
    return p


def _dir(tmp: Path) -> Path:
    p = tmp / "folder.wav"
    p.mkdir()
    return p


def _nan_at(value: float) -> np.ndarray:
    x = _tone(3.0)
    x[12345] = value
    return x


def _stereo(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.stack([left, right], axis=1)


_T = _tone(4.0)
AUDIO_ROWS = [
    Row("pcm16", _write("pcm16.wav", _tone(4.0)), "ok"),
    Row("pcm-u8", _write("u8.wav", _tone(4.0), subtype="PCM_U8"), "ok"),
    Row("pcm24", _write("p24.wav", _tone(4.0), subtype="PCM_24"), "ok"),
    Row("pcm32", _write("p32.wav", _tone(4.0), subtype="PCM_32"), "ok"),
    Row("float32", _write("f32.wav", _tone(4.0), subtype="FLOAT"), "ok"),
    Row("float64", _write("f64.wav", _tone(4.0), subtype="DOUBLE"), "ok"),
    Row("flac-8k", _write("sprsound-like.flac", _tone(4.0, 8000), rate=8000), "ok"),
    Row("flac-44k1-24bit", _write("hi.flac", _tone(4.0, 44100), rate=44100, subtype="PCM_24"), "ok"),
    Row("ogg-vorbis", _write("rec.ogg", _tone(4.0), subtype="VORBIS"), "ok"),
    Row("aiff", _write("rec.aiff", _tone(4.0)), "ok"),
    Row("mp3", _write("rec.mp3", _tone(4.0, 22050), rate=22050, fmt="MP3", subtype="MPEG_LAYER_III"), "ok"),
    Row("rate-4k", _write("r4k.wav", _tone(4.0, 4000), rate=4000), "ok"),
    Row("rate-11025", _write("r11k.wav", _tone(4.0, 11025), rate=11025), "ok"),
    Row("rate-192k", _write("r192k.wav", _tone(3.0, 192000), rate=192000), "ok"),
    Row("stereo-same", _write("st.wav", _tone(4.0, channels=2)), "ok"),
    Row("six-channels", _write("six.wav", _tone(4.0, channels=6)), "ok"),
    Row("uppercase-suffix", _write("REC.WAV", _tone(4.0), fmt="WAV"), "ok"),
    Row("list-info-chunk", _bytes("info.wav", _with_chunk(b"LIST", b"INFOINAM\x06\x00\x00\x00chest\x00")), "ok"),
    Row("vendor-odd-chunk", _bytes("vendor.wav", _with_chunk(b"stth", b"odd")), "ok"),
    Row("exactly-min-length", _write("min.wav", _tone(0.25)), "ok"),
    Row("stereo-left-only", _write("left.wav", _stereo(_T, 0 * _T)), "warn:channel"),
    Row("stereo-cancelling", _write("cancel.wav", _stereo(_T, -_T)), "warn:channel"),
    Row("digital-silence", _write("silence.wav", np.zeros(4 * RATE)), "warn:silen"),
    Row("clipped", _write("clip.wav", np.clip(_tone(4.0, level=3.0), -1, 1)), "warn:clip"),
    Row("dc-offset", _write("dc.wav", _tone(4.0) + 0.5), "warn:dc"),
    Row("unfinalised-zero-sizes", _bytes("killed.wav", _sizes(0, 0)), "warn:unfinalised"),
    Row("unfinalised-ffffffff", _bytes("killed-ff.wav", _sizes(0xFFFFFFFF, 0xFFFFFFFF)), "warn:"),
    Row("header-claims-more", _bytes("cut.wav", lambda: _wav_bytes(3.0)[: 44 + 2 * 24000]), "warn:truncated"),
    Row("flac-cut-in-half", _half("cut.flac", "FLAC", "PCM_16"), "warn:"),
    Row("empty", _bytes("empty.wav", b""), "error:empty"),
    Row("text", _bytes("notes.wav", b"patient notes, not audio\n" * 40), "error:not a readable audio file"),
    Row("random-bytes", _bytes("noise.wav", np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "error:not a readable audio file"),
    Row("png-as-wav", _bytes("photo.wav", b"\x89PNG\r\n\x1a\n" + bytes(200)), "error:not a readable audio file"),
    Row("json-as-wav", _bytes("ann.wav", b'{"record_annotation": "Normal"}'), "error:not a readable audio file"),
    Row("truncated-header", _bytes("th.wav", lambda: _wav_bytes(1.0)[:30]), "error:"),
    Row("riff-only", _bytes("riff.wav", b"RIFF\xff\xff\xff\x7fWAVE"), "error:"),
    Row("zero-samples", _write("zero.wav", np.zeros(0)), "error:no audio samples"),
    Row("one-sample", _write("one.wav", np.zeros(1)), "error:"),
    Row("too-short", _write("short.wav", _tone(0.2)), "error:short.wav"),
    Row("nan-sample", _write("nan.wav", _nan_at(np.nan), subtype="FLOAT"), "error:nan"),
    Row("inf-sample", _write("inf.wav", _nan_at(np.inf), subtype="DOUBLE"), "error:infinite"),
    Row("rate-2k", _write("r2k.wav", _tone(3.0, 2000), rate=2000), "error:sample rate"),
    Row("rate-384k", _write("r384k.wav", _tone(0.5, 384000), rate=384000), "error:sample rate"),
    Row("missing", lambda tmp: tmp / "no-such.wav", "error:no such file"),
    Row("directory", _dir, "error:directory"),
    Row("dangling-symlink", _link("dangling.wav", "gone.wav"), "error:no such file"),
    Row("symlink-loop", _loop, "error:symlink loop"),
    Row("fifo", _fifo, "error:not a regular file"),
]


@pytest.fixture(scope="module")
def shipped() -> Path:
    return default_bundle()


@pytest.fixture(scope="module")
def clf(shipped: Path) -> Classifier:
    return Classifier.open(shipped, threads=1)


@pytest.mark.parametrize("row", AUDIO_ROWS, ids=[r.id for r in AUDIO_ROWS])
def test_audio_cli(row: Row, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = row.make(tmp_path)
    before = _snapshot(tmp_path)
    out = tmp_path / "result.jsonl"
    code, _, err = _cli(capsys, "classify", path, "--jsonl", out, "--threads", "1")
    _assert_cli_verdict(row, code, err)
    if row.kind == "error":
        assert not out.exists(), "a refused input must not publish an output file"
    else:
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert records and all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in records)
    assert _snapshot(tmp_path, skip=out) == before, "an input file was changed"


@pytest.mark.parametrize("row", AUDIO_ROWS, ids=[r.id for r in AUDIO_ROWS])
def test_audio_api(row: Row, tmp_path: Path, clf: Classifier) -> None:
    path = row.make(tmp_path)
    if row.kind == "error":
        with pytest.raises(StethoedgeError) as info:
            list(clf.classify(FileSource(path)))
        message = str(info.value)
        assert "\n" not in message and row.text.lower() in message.lower(), message
    else:
        results = list(clf.classify(FileSource(path)))
        assert results and all(np.isfinite(list(r.probabilities.values())).all() for r in results)


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """(mode, size) of every entry under ``root`` (lstat: links stay links), except ``skip``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p == skip:
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size if stat.S_ISREG(st.st_mode) else 0)
    return out


# ------------------------------------------------------------------ bundles and manifests
def _manifest(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """A bundle edit that changes manifest.json (the files keep their sha256)."""
    def apply(bundle: Path) -> None:
        m = json.loads((bundle / "manifest.json").read_text())
        edit(m)
        (bundle / "manifest.json").write_text(json.dumps(m, indent=2))
    return apply


def _spec(**fields) -> Callable[[Path], None]:
    return _manifest(lambda m: m["feature_spec"].update(fields))


def _art(index: int, **fields) -> Callable[[Path], None]:
    return _manifest(lambda m: m["artifacts"][index].update(fields))


def _reseal(file: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Change a bundle file and re-seal its sha256 and size in the manifest (a consistent but wrong bundle)."""
    def apply(bundle: Path) -> None:
        p = bundle / file
        p.write_bytes(change(p.read_bytes()))
        m = json.loads((bundle / "manifest.json").read_text())
        for a in m["artifacts"]:
            if a["file"] == file:
                a["sha256"], a["size_bytes"] = sha256_file(p), p.stat().st_size
        if m["selftest"]["file"] == file:
            m["selftest"]["sha256"] = sha256_file(p)
        (bundle / "manifest.json").write_text(json.dumps(m, indent=2))
    return apply


def _raw_manifest(data: bytes) -> Callable[[Path], None]:
    return lambda bundle: (bundle / "manifest.json").write_bytes(data)


def _bom(bundle: Path) -> None:
    p = bundle / "manifest.json"
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())


def _selftest_outside(bundle: Path) -> None:
    shutil.copy(bundle / "selftest.npz", bundle.parent / "elsewhere.npz")
    _manifest(lambda m: m["selftest"].update(file="../elsewhere.npz"))(bundle)


def _selftest_absolute(bundle: Path) -> None:
    _manifest(lambda m: m["selftest"].update(file=str((bundle / "selftest.npz").resolve())))(bundle)


def _selftest_symlink_out(bundle: Path) -> None:
    outside = bundle.parent / "outside.npz"
    shutil.move(bundle / "selftest.npz", outside)
    (bundle / "selftest.npz").symlink_to(outside)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda bundle: (bundle / name).unlink()


def _labels(labels: list) -> Callable[[Path], None]:
    return _manifest(lambda m: m.update(labels=labels))


def _pop(*path: str) -> Callable[[Path], None]:
    def edit(m: dict) -> None:
        node = m
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1])
    return _manifest(edit)


BUNDLE_ROWS = [
    Row("shipped-unchanged", lambda b: None, "ok"),
    Row("manifest-with-bom", _bom, "ok"),
    Row("extra-unknown-key", _manifest(lambda m: m.update(notes="bench unit 3")), "ok"),
    Row("dither-zero", _spec(dither=0), "ok"),
    Row("high-freq-above-nyquist", _spec(high_freq_hz=9000.0, kind="kaldi-fbank"), "error:high_freq_hz"),
    Row("low-freq-negative", _spec(low_freq_hz=-1.0), "error:low_freq_hz"),
    Row("low-above-high", _spec(low_freq_hz=14000.0, high_freq_hz=12000.0), "error:low_freq_hz"),
    Row("n-mels-zero", _spec(n_mels=0), "error:n_mels"),
    Row("n-mels-string", _spec(n_mels="128"), "error:n_mels"),
    Row("sample-rate-zero", _spec(sample_rate=0), "error:sample_rate"),
    Row("sample-rate-huge", _spec(sample_rate=10**9), "error:sample_rate"),
    Row("frame-shift-zero", _spec(frame_shift_ms=0), "error:frame_shift_ms"),
    Row("window-negative", _spec(window_seconds=-8.0), "error:window_seconds"),
    Row("norm-std-zero", _spec(norm_std=0.0), "error:norm_std"),
    Row("unknown-kind", _spec(kind="mfcc"), "error:kind"),
    Row("dither-one", _spec(dither=1.0), "error:dither"),
    Row("duplicate-labels", _labels(["normal", "crackle", "crackle", "both"]), "error:label"),
    Row("empty-label", _labels(["normal", "", "wheeze", "both"]), "error:label"),
    Row("control-char-label", _labels(["normal", "crack\nle", "wheeze", "both"]), "error:label"),
    Row("three-labels", _labels(["normal", "crackle", "wheeze"]), "error:"),
    Row("labels-not-a-list", _labels("normal,crackle"), "error:labels"),
    Row("nan-tolerance", _art(0, tolerance=float("nan")), "error:tolerance"),
    Row("negative-tolerance", _art(0, tolerance=-0.1), "error:tolerance"),
    Row("selftest-outside", _selftest_outside, "error:selftest"),
    Row("selftest-absolute", _selftest_absolute, "error:"),
    Row("selftest-symlink-escaping", _selftest_symlink_out, "error:"),
    Row("artifact-path-traversal", _art(0, file="../../etc/passwd"), "error:"),
    Row("default-artifact-unknown", _manifest(lambda m: m.update(default_artifact="onnx-int4")), "error:onnx-int4"),
    Row("no-artifacts", _manifest(lambda m: m.update(artifacts=[])), "error:"),
    Row("schema-99", _manifest(lambda m: m.update(schema_version=99)), "error:schema"),
    Row("schema-string", _manifest(lambda m: m.update(schema_version="2")), "error:schema"),
    Row("no-feature-spec", _pop("feature_spec"), "error:feature_spec"),
    Row("no-selftest", _pop("selftest"), "error:selftest"),
    Row("manifest-missing", _remove("manifest.json"), "error:manifest"),
    Row("manifest-not-json", _raw_manifest(b"{not json"), "error:"),
    Row("manifest-a-list", _raw_manifest(b"[1, 2, 3]"), "error:"),
    Row("manifest-binary", _raw_manifest(bytes(range(256))), "error:"),
    Row("model-missing", _remove("model.onnx"), "error:model.onnx"),
    Row("model-tampered", lambda b: (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:-10] + bytes(10)),
        "error:sha256"),
    Row("model-truncated-resealed", _reseal("model.onnx", lambda d: d[: len(d) // 2]), "error:"),
    Row("selftest-garbage-resealed", _reseal("selftest.npz", lambda d: b"not an npz" * 10), "error:selftest"),
]


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    p = tmp_path / "breath.wav"
    sf.write(str(p), _tone(4.0), RATE)
    return p


def _bundle_copy(shipped: Path, tmp: Path, row: Row) -> Path:
    bundle = tmp / "bundle"
    shutil.copytree(shipped, bundle)
    row.make(bundle)
    return bundle


@pytest.mark.parametrize("row", BUNDLE_ROWS, ids=[r.id for r in BUNDLE_ROWS])
def test_bundle_cli(row: Row, shipped: Path, tmp_path: Path, wav: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = _bundle_copy(shipped, tmp_path, row)
    out = tmp_path / "result.jsonl"
    code, _, err = _cli(capsys, "classify", bundle, wav, "--jsonl", out, "--threads", "1")
    _assert_cli_verdict(row, code, err)
    assert out.exists() == (row.kind != "error")


@pytest.mark.parametrize("row", BUNDLE_ROWS, ids=[r.id for r in BUNDLE_ROWS])
def test_bundle_api(row: Row, shipped: Path, tmp_path: Path) -> None:
    bundle = _bundle_copy(shipped, tmp_path, row)
    if row.kind == "error":
        with pytest.raises(StethoedgeError) as info:
            Classifier.open(bundle, threads=1)
        message = str(info.value)
        assert "\n" not in message and row.text.lower() in message.lower(), message
    else:
        b = load_bundle(bundle)
        assert len(set(b.labels)) == len(b.labels) == 4
        Classifier.open(bundle, threads=1)


# ------------------------------------------------------------------ command-line arguments
ARG_ROWS = [  # (id, argv after the command, expected text on the error line)
    ("hop-inf", ["classify", "{wav}", "--hop", "inf"], "--hop"),
    ("hop-nan", ["classify", "{wav}", "--hop", "nan"], "--hop"),
    ("hop-tiny", ["classify", "{wav}", "--hop", "0.0001"], "--hop"),
    ("hop-negative", ["classify", "{wav}", "--hop", "-2"], "--hop"),
    ("hop-text", ["classify", "{wav}", "--hop", "two"], "--hop"),
    ("min-seconds-huge", ["classify", "{wav}", "--min-seconds", "1e9"], "--min-seconds"),
    ("threads-1000", ["classify", "{wav}", "--threads", "1000"], "--threads"),
    ("threads-zero", ["classify", "{wav}", "--threads", "0"], "--threads"),
    ("smooth-bogus", ["classify", "{wav}", "--smooth", "median-ish"], "--smooth"),
    ("backend-unknown", ["classify", "{wav}", "--backend", "cuda-magic"], "--backend"),
    ("artifact-unknown", ["classify", "{wav}", "--artifact", "nope"], "nope"),
    ("bench-artifact-unknown", ["bench", "{bundle}", "--artifact", "nope"], "nope"),
    ("batch-workers-zero", ["classify-batch", "{dir}", "--workers", "0"], "--workers"),
    ("batch-workers-huge", ["classify-batch", "{dir}", "--workers", "100000"], "--workers"),
    ("batch-not-a-dir", ["classify-batch", "{wav}"], ""),
    ("listen-baud-zero", ["listen", "--replay", "{wav}", "--baud", "0"], "--baud"),
    ("listen-segment-zero", ["listen", "--replay", "{wav}", "--record", "{tmp}/rec", "--segment-seconds", "0"],
     "--segment-seconds"),
    ("listen-retry-inf", ["listen", "--replay", "{wav}", "--retry-seconds", "inf"], "--retry-seconds"),
    ("simulate-too-short", ["simulate", "--out", "{tmp}/sim", "--seconds", "5"], "--seconds"),
    ("train-epochs-zero", ["train", "--out", "{tmp}/run", "--epochs", "0"], "--epochs"),
    ("train-lr-nan", ["train", "--out", "{tmp}/run", "--lr", "nan"], "--lr"),
    ("demo-patients-zero", ["demo", "--patients", "0"], "--patients"),
    ("classify-no-audio", ["classify"], ""),
    ("classify-too-many", ["classify", "{bundle}", "{wav}", "{wav}"], ""),
    ("unknown-command", ["diagnose-everything"], ""),
]


@pytest.mark.parametrize("row", ARG_ROWS, ids=[r[0] for r in ARG_ROWS])
def test_cli_arguments(row: tuple, shipped: Path, tmp_path: Path, wav: Path, capsys: pytest.CaptureFixture) -> None:
    _, argv, says = row
    (tmp_path / "d").mkdir()
    shutil.copy(wav, tmp_path / "d" / "a.wav")
    fill = {"wav": str(wav), "bundle": str(shipped), "dir": str(tmp_path / "d"), "tmp": str(tmp_path)}
    args = [a.format(**fill) for a in argv]
    before = _snapshot(tmp_path)
    try:
        code = main(args)
    except SystemExit as exc:  # argparse refuses with exit 2 and a usage line
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err
    assert says in error_lines[0], error_lines[0]
    assert _snapshot(tmp_path) == before, "a refused command changed files"


# ------------------------------------------------------------------ output targets
def _fifo_reader(path: Path, got: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(path, "rb") as f:
            got.append(f.read())
    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


OUTPUT_ROWS = ["dev-null", "fifo", "symlink-to-file", "existing-0600", "stdout", "same-as-input", "hardlink-to-input",
               "symlink-to-input", "missing-parent", "a-directory", "batch-output-is-an-input", "listen-jsonl-is-input",
               "record-dir-is-a-file"]


@pytest.mark.parametrize("case", OUTPUT_ROWS)
def test_output_targets(case: str, tmp_path: Path, wav: Path, capsys: pytest.CaptureFixture) -> None:
    """Outputs: devices/FIFOs/links written through, never replaced; an input is never an output."""
    original = wav.read_bytes()
    args: list = ["classify", wav, "--jsonl"]
    expect_error, got, reader = None, [], None
    if case == "dev-null":
        target = Path("/dev/null")
    elif case == "fifo":
        target = tmp_path / "results.fifo"
        os.mkfifo(target)
        reader = _fifo_reader(target, got)
    elif case == "symlink-to-file":
        (tmp_path / "real.jsonl").write_text("old\n")
        target = tmp_path / "link.jsonl"
        target.symlink_to(tmp_path / "real.jsonl")
    elif case == "existing-0600":
        target = tmp_path / "private.jsonl"
        target.write_text("old\n")
        target.chmod(0o600)
    elif case == "stdout":
        target = Path("-")
    elif case == "same-as-input":
        target, expect_error = wav, "refusing to overwrite an input"
    elif case == "hardlink-to-input":
        target, expect_error = tmp_path / "hard.jsonl", "refusing to overwrite an input"
        os.link(wav, target)
    elif case == "symlink-to-input":
        target, expect_error = tmp_path / "sneaky.jsonl", "refusing to overwrite an input"
        target.symlink_to(wav)
    elif case == "missing-parent":
        target, expect_error = tmp_path / "no" / "such" / "dir" / "out.jsonl", "no"
    elif case == "a-directory":
        target, expect_error = tmp_path, "directory"
    elif case == "batch-output-is-an-input":
        args, target, expect_error = ["classify-batch", tmp_path, "--jsonl"], wav, "refusing to overwrite an input"
    elif case == "listen-jsonl-is-input":
        args, target, expect_error = ["listen", "--replay", wav, "--fast", "--jsonl"], wav, "refusing to overwrite an input"
    else:  # record-dir-is-a-file: --record names a directory; an existing file there is not replaced
        args, target, expect_error = ["listen", "--replay", wav, "--fast", "--record"], wav, ""
    before = target.lstat() if str(target) != "-" and os.path.lexists(target) else None
    code, out, err = _cli(capsys, *args, target, "--threads", "1")
    assert "Traceback" not in err
    assert wav.read_bytes() == original, "the input recording was changed"
    if expect_error is not None:
        assert code == 2, err
        assert expect_error in err.lower(), err
        if before is not None and target != wav and case != "a-directory":
            assert target.lstat().st_mtime_ns == before.st_mtime_ns
        return
    assert code == 0, err
    if case == "dev-null":
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    elif case == "fifo":
        reader.join(timeout=30)
        assert stat.S_ISFIFO(target.lstat().st_mode) and got and got[0].count(b"\n") >= 1
    elif case == "symlink-to-file":
        assert target.is_symlink() and json.loads((tmp_path / "real.jsonl").read_text().splitlines()[0])
    elif case == "existing-0600":
        assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text() != "old\n"
    elif case == "stdout":
        assert json.loads(out.splitlines()[0])["label"]


# ------------------------------------------------------------------ serial streams (a real pty)
def _stream(seconds: float = 1.0, rate: int = RATE, fmt: str = "PCM16", frame: int = 256) -> list[bytes]:
    from stethoedge.firmware_bridge.device_simulator import device_stream, to_int16
    from stethoedge.firmware_bridge.protocol import AudioFormat

    pcm = to_int16(_tone(seconds, rate))
    return [b for b, _ in device_stream(pcm, rate, AudioFormat[fmt], frame_samples=frame, heartbeat_ms=100)]


def _frames_edit(edit: Callable[[list[bytes]], list[bytes]], **kw) -> Callable[[], bytes]:
    return lambda: b"".join(edit(_stream(**kw)))


def _flip(frames: list[bytes], k: int) -> list[bytes]:
    f = bytearray(frames[k])
    f[len(f) // 2] ^= 0x40
    return frames[:k] + [bytes(f)] + frames[k + 1:]


SERIAL_ROWS = [  # (id, bytes, verdict: "audio:<stat>=<min>" or "error:<text>")
    ("pcm16-stream", _frames_edit(lambda f: f), "audio:"),
    ("adpcm-stream", _frames_edit(lambda f: f, fmt="IMA_ADPCM"), "audio:"),
    ("8k-device", _frames_edit(lambda f: f, rate=8000), "audio:"),
    ("one-frame-corrupted", _frames_edit(lambda f: _flip(f, 10)), "audio:crc_errors"),
    ("one-frame-dropped", _frames_edit(lambda f: f[:10] + f[11:]), "audio:gaps"),
    ("one-frame-twice", _frames_edit(lambda f: f[:10] + [f[10]] + f[10:]), "audio:duplicates"),
    ("garbage-before", _frames_edit(lambda f: [b"\x13\x37garbage" * 20] + f), "audio:garbage_bytes"),
    ("huge-frame-inside", _frames_edit(lambda f: f[:10] + [b"\x7f" * 5000 + b"\x00"] + f[10:]), "audio:oversize"),
    ("no-hello", _frames_edit(lambda f: f[:1] + f[2:]), "audio:"),
    ("serial-random-bytes", lambda: np.random.default_rng(5).integers(1, 256, 3000, dtype=np.uint8).tobytes(), "error:frame"),
    ("zeros-only", lambda: bytes(3000), "error:"),
    ("hello-then-silence", _frames_edit(lambda f: f[:2]), "error:"),
]


@pytest.mark.parametrize("row", SERIAL_ROWS, ids=[r[0] for r in SERIAL_ROWS])
def test_serial_streams(row: tuple) -> None:
    """Byte streams written to a real pseudo-terminal and read by the bridge source."""
    pytest.importorskip("serial", reason="pyserial is not installed: the bridge source needs it")
    from stethoedge.firmware_bridge.links import PtyPair
    from stethoedge.firmware_bridge.serial_source import BridgeSource

    _, make, verdict = row
    data = make()
    pty = PtyPair()
    src = BridgeSource(pty.slave_name, 921600, start=False, idle_timeout=0.5)
    writer = threading.Thread(target=os.write, args=(pty.master, data), daemon=True)  # a pty holds a few KB
    try:
        writer.start()
        if verdict.startswith("error:"):
            with pytest.raises(StethoedgeError) as info:
                list(src.chunks())
            message = str(info.value)
            assert "\n" not in message and verdict[6:] in message, message
        else:
            chunks = list(src.chunks())
            samples = sum(c.samples.shape[0] for c in chunks)
            assert samples > 0.8 * RATE, samples  # about 1 s of audio came through, at 16 kHz
            assert all(np.isfinite(c.samples).all() for c in chunks)
            counter = verdict.split(":", 1)[1]
            if counter:
                assert getattr(src.stats, counter) >= 1, src.stats
    finally:
        writer.join(timeout=5)
        src.close()
        pty.close()


# ------------------------------------------------------------------ dataset folders
def _icbhi(files: dict[str, bytes | str | None], split: str | None = None) -> Callable[[Path], Path]:
    """An ICBHI-layout folder: ``stem.wav`` (``None``: a 6 s recording) and ``stem.txt`` contents."""
    def make(tmp: Path) -> Path:
        root = tmp / "icbhi"
        root.mkdir()
        for name, content in files.items():
            p = root / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                sf.write(str(p), _tone(6.0, 4000), 4000)
            elif isinstance(content, str):
                p.write_text(content)
            else:
                p.write_bytes(content)
        if split is not None:
            (root / "ICBHI_challenge_train_test.txt").write_text(split)
        return root
    return make


GOOD_TXT = "0.1\t2.0\t0\t0\n2.0\t4.1\t1\t0\n4.1\t5.9\t0\t1\n"
STEM = "101_1b1_Al_sc_Meditron"
ICBHI_ROWS = [
    Row("icbhi-good", _icbhi({f"{STEM}.wav": None, f"{STEM}.txt": GOOD_TXT}), "ok"),
    Row("icbhi-flac", _icbhi({f"{STEM}.flac": None, f"{STEM}.txt": GOOD_TXT}), "ok"),
    Row("icbhi-crlf-and-blank-lines", _icbhi({f"{STEM}.wav": None, f"{STEM}.txt": GOOD_TXT.replace("\n", "\r\n") + "\r\n"}),
        "ok"),
    Row("icbhi-nested-folders", _icbhi({f"a/b/{STEM}.wav": None, f"a/b/{STEM}.txt": GOOD_TXT}), "ok"),
    Row("icbhi-empty-folder", _icbhi({}), "error:no <stem>.wav"),
    Row("icbhi-wav-without-txt", _icbhi({f"{STEM}.wav": None}), "error:no <stem>.wav"),
    Row("icbhi-bad-line", _icbhi({f"{STEM}.wav": None, f"{STEM}.txt": "0.1 2.0 0\n"}), "error:.txt:1: expected 4 fields"),
    Row("icbhi-flag-2", _icbhi({f"{STEM}.wav": None, f"{STEM}.txt": "0.1 2.0 2 0\n"}), "error:.txt:1: crackles flag"),
    Row("icbhi-reversed-cycle", _icbhi({f"{STEM}.wav": None, f"{STEM}.txt": "3.0 2.0 0 0\n"}), "error:.txt:1: cycle end"),
    Row("icbhi-nan-time", _icbhi({f"{STEM}.wav": None, f"{STEM}.txt": "nan 2.0 0 0\n"}), "error:.txt:1: start 'nan' is not finite"),
    Row("icbhi-binary-txt", _icbhi({f"{STEM}.wav": None, f"{STEM}.txt": bytes(range(256))}), "error:"),
    Row("icbhi-bad-stem", _icbhi({"recording_7.wav": None, "recording_7.txt": GOOD_TXT}), "error:recording_7"),
    Row("icbhi-same-stem-twice", _icbhi({f"a/{STEM}.wav": None, f"a/{STEM}.txt": GOOD_TXT,
                                         f"b/{STEM}.wav": None, f"b/{STEM}.txt": GOOD_TXT}), "error:also exists"),
    Row("icbhi-audio-broken", _icbhi({f"{STEM}.wav": b"RIFF0000WAVEjunk", f"{STEM}.txt": GOOD_TXT}), "error:"),
    Row("icbhi-split-file-garbage", _icbhi({f"{STEM}.wav": None, f"{STEM}.txt": GOOD_TXT}, split="\x00\x01\x02 ???\n"),
        "error:ICBHI_challenge_train_test.txt"),
]


@pytest.mark.parametrize("row", ICBHI_ROWS, ids=[r.id for r in ICBHI_ROWS])
def test_icbhi_folder_api(row: Row, tmp_path: Path) -> None:
    from stethoedge.train.icbhi import list_recordings, load_cycles

    root = row.make(tmp_path)
    if row.kind == "error":
        with pytest.raises(StethoedgeError) as info:
            for rec in list_recordings(root):
                load_cycles(rec)
        assert "\n" not in str(info.value) and row.text in str(info.value), str(info.value)
    else:
        cycles = [c for rec in list_recordings(root) for c in load_cycles(rec)]
        assert len(cycles) == 3


@pytest.mark.parametrize("row", ICBHI_ROWS, ids=[r.id for r in ICBHI_ROWS])
def test_icbhi_folder_cli(row: Row, shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``bench --data`` reads an ICBHI-layout folder (agreement and Score on its windows)."""
    root = row.make(tmp_path)
    code, _, err = _cli(capsys, "bench", shipped, "--data", root, "--data-windows", "3", "--runs", "1",
                        "--artifact", "onnx-fp32", "--threads", "1")
    _assert_cli_verdict(Row(row.id, row.make, row.verdict if row.kind == "error" else "ok"), code, err)


def _spr(files: dict[str, object], folders: tuple[str, ...] = ("train2022", "test2022_inter", "test2022_intra")) -> Callable[[Path], Path]:
    """An SPRSound-layout release: ``folder/stem.wav`` (``None``: 5 s of audio) and ``.json`` contents."""
    def make(tmp: Path) -> Path:
        root = tmp / "sprsound"
        root.mkdir()
        for folder in folders:
            (root / folder).mkdir(parents=True)
        for name, content in files.items():
            p = root / name
            if content is None:
                sf.write(str(p), _tone(5.0, 8000), 8000)
            elif isinstance(content, (dict, list)):
                p.write_text(json.dumps(content))
            else:
                p.write_bytes(content if isinstance(content, bytes) else str(content).encode())
        return root
    return make


SPR_STEM = "train2022/41137620_7.6_1_p1_2281"
SPR_OK = {"record_annotation": "CAS", "event_annotation": [{"start": "200", "end": "1800", "type": "Wheeze"}]}
SPR_ROWS = [
    Row("spr-good", _spr({f"{SPR_STEM}.wav": None, f"{SPR_STEM}.json": SPR_OK}), "ok"),
    Row("spr-poor-quality-no-events", _spr({f"{SPR_STEM}.wav": None, f"{SPR_STEM}.json":
                                            {"record_annotation": "Poor Quality", "event_annotation": []}}), "ok"),
    Row("spr-missing-split-folder", _spr({}, folders=()), "error:missing SPRSound split folder"),
    Row("spr-empty", _spr({}), "error:no SPRSound recordings"),
    Row("spr-json-without-audio", _spr({f"{SPR_STEM}.json": SPR_OK}), "error:no SPRSound recordings"),
    Row("spr-bad-json", _spr({f"{SPR_STEM}.wav": None, f"{SPR_STEM}.json": "{oops"}), "error:unreadable annotation"),
    Row("spr-unknown-record-label", _spr({f"{SPR_STEM}.wav": None, f"{SPR_STEM}.json":
                                          {"record_annotation": "Abnormal", "event_annotation": []}}),
        "error:record_annotation"),
    Row("spr-events-an-int", _spr({f"{SPR_STEM}.wav": None, f"{SPR_STEM}.json":
                                   {"record_annotation": "CAS", "event_annotation": 7}}), "error:must be a list"),
    Row("spr-unknown-event-type", _spr({f"{SPR_STEM}.wav": None, f"{SPR_STEM}.json":
                                        {"record_annotation": "CAS", "event_annotation":
                                         [{"start": "0", "end": "900", "type": "Squawk"}]}}), "error:Squawk"),
    Row("spr-location-p7", _spr({"train2022/41137620_7.6_1_p7_2281.wav": None,
                                 "train2022/41137620_7.6_1_p7_2281.json": SPR_OK}), "error:p7"),
    Row("spr-stem-garbage", _spr({"train2022/recording.wav": None, "train2022/recording.json": SPR_OK}),
        "error:recording"),
]


@pytest.mark.parametrize("row", SPR_ROWS, ids=[r.id for r in SPR_ROWS])
def test_sprsound_folder_api(row: Row, tmp_path: Path) -> None:
    from stethoedge.train.sprsound import list_records, load_events

    root = row.make(tmp_path)
    if row.kind == "error":
        with pytest.raises(StethoedgeError) as info:
            for rec in list_records(root, splits=("train2022",)):
                load_events(rec)
        assert "\n" not in str(info.value) and row.text in str(info.value), str(info.value)
    else:
        records = list_records(root, splits=("train2022",))
        assert len(records) == 1 and all(len(seg) > 0 for seg, _ in load_events(records[0]))


@pytest.mark.parametrize("row", [r for r in SPR_ROWS if r.kind == "error"], ids=[r.id for r in SPR_ROWS if r.kind == "error"])
def test_sprsound_folder_cli(row: Row, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``train-edge`` refuses a broken SPRSound release before any training (one line, exit 2)."""
    root = row.make(tmp_path)
    recipe = tmp_path / "recipe.toml"
    weights = REPO.parent / "shared" / "weights" / "efficientat_mn04_as.pt"
    recipe.write_text(f'weights = "{weights}"\nsprsound = "{root}"\ncache_dir = "{tmp_path / "cache"}"\nepochs = 1\n')
    code, _, err = _cli(capsys, "train-edge", "--recipe", recipe, "--out", tmp_path / "run")
    _assert_cli_verdict(row, code, err)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_battery_has_at_least_100_distinct_inputs() -> None:
    """The issue's bar: at least 100 distinct inputs across the six tables."""
    sizes = {"audio": len(AUDIO_ROWS), "bundles": len(BUNDLE_ROWS), "arguments": len(ARG_ROWS),
             "outputs": len(OUTPUT_ROWS), "serial": len(SERIAL_ROWS), "datasets": len(ICBHI_ROWS) + len(SPR_ROWS)}
    assert sum(sizes.values()) >= 100, sizes
    ids = [r.id for r in AUDIO_ROWS + BUNDLE_ROWS + ICBHI_ROWS + SPR_ROWS] + [r[0] for r in ARG_ROWS + SERIAL_ROWS]
    assert len(ids) == len(set(ids))


def test_unreadable_recording_is_permission_denied(tmp_path: Path) -> None:
    """A recording the user may not read: one line, exit 2. As root (who reads mode-000 files) the
    CLI is run as the unprivileged user ``nobody`` through ``setpriv``, so this is never skipped there."""
    import sys
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="stethoedge-unreadable-"))
    try:
        folder.chmod(0o755)
        path = folder / "locked.wav"
        sf.write(str(path), _tone(3.0), RATE)
        path.chmod(0)
        cmd = [sys.executable, "-m", "stethoedge", "classify", str(path)]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: cannot drop privileges to make a file unreadable")
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        env = dict(os.environ, HOME=str(folder), PYTHONPATH=str(REPO))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=folder)
        if "No module named" in r.stderr or "Permission denied: '" in r.stderr and "site-packages" in r.stderr:
            pytest.skip(f"the unprivileged user cannot run this interpreter: {r.stderr.strip()[-200:]}")
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("error:") and "permission denied" in r.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)
