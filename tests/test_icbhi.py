"""ICBHI loader: annotation/name/split parsing, the split quirks, hold-out, cycles, and the real sample."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stethoedge.runtime.audio_io import load_audio, write_wav
from stethoedge.runtime.errors import DataError
from stethoedge.train.icbhi import (
    Cycle,
    Recording,
    RecordingInfo,
    default_patient_split,
    list_recordings,
    load_cycles,
    parse_annotation,
    parse_stem,
    patient_holdout,
    read_split,
    resolve_split,
)

REPO = Path(__file__).resolve().parents[1]


def icbhi_sample_dir() -> Path:
    """The shared real ICBHI sample, or skip the test with the exact reason."""
    env = os.environ.get("STETHOEDGE_ICBHI_SAMPLE")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "icbhi_sample"
    if not (path / "audio_and_txt_files").is_dir():
        pytest.skip(f"real ICBHI sample data: ../shared/data/icbhi_sample not present (looked at {path}; "
                    "set STETHOEDGE_ICBHI_SAMPLE to its location)")
    return path


# --------------------------------------------------------------------------- annotations


def test_parse_annotation_tabs_spaces_crlf_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(b"0.036\t0.579\t0\t0\r\n0.579  2.45 1 0\r\n\r\n2.45\t3.893\t0\t1\n3.893 5.0 1 1\n\n")
    cycles = parse_annotation(p)
    assert cycles == [Cycle(0.036, 0.579, 0, 0), Cycle(0.579, 2.45, 1, 0),
                      Cycle(2.45, 3.893, 0, 1), Cycle(3.893, 5.0, 1, 1)]
    assert [c.label for c in cycles] == [0, 1, 2, 3]
    assert cycles[0].duration_s == pytest.approx(0.543)


def test_parse_annotation_empty_file_has_no_cycles(tmp_path: Path) -> None:
    p = tmp_path / "empty.txt"
    p.write_text("")
    assert parse_annotation(p) == []


@pytest.mark.parametrize(
    "line, message",
    [
        ("0.1 0.5 0", "expected 4 fields"),
        ("0.1 0.5 0 0 7", "expected 4 fields"),
        ("abc 0.5 0 0", "start 'abc' is not a number"),
        ("0.1 x 0 0", "end 'x' is not a number"),
        ("0.5 0.5 0 0", "is not after its start"),
        ("0.9 0.5 0 0", "is not after its start"),
        ("0.1 0.5 2 0", "crackles flag '2' must be 0 or 1"),
        ("0.1 0.5 0 yes", "wheezes flag 'yes' must be 0 or 1"),
        ("-0.1 0.5 0 0", "negative"),
        ("nan 0.5 0 0", "not finite"),
    ],
)
def test_parse_annotation_bad_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    p = tmp_path / "bad.txt"
    p.write_text(f"0 0.1 0 0\n\n{line}\n")
    with pytest.raises(DataError) as err:
        parse_annotation(p)
    text = str(err.value)
    assert text.startswith(f"{p}:3: ") and message in text
    assert "\n" not in text


def test_parse_annotation_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        parse_annotation(tmp_path / "nope.txt")
    p = tmp_path / "bin.txt"
    p.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        parse_annotation(p)


# --------------------------------------------------------------------------- names and split


def test_parse_stem() -> None:
    assert parse_stem("101_1b1_Al_sc_Meditron") == RecordingInfo(101, "1b1", "Al", "sc", "Meditron")
    assert parse_stem("226_1b1_Pl_sc_LittC2SE").key == (226, "1b1", "Pl", "sc")
    for bad in ("101_1b1_Al_sc", "abc_1b1_Al_sc_Meditron", "101_1b1_Xx_sc_Meditron", "101_1b1_Al_zz_Meditron", ""):
        with pytest.raises(DataError):
            parse_stem(bad)


def test_read_split_crlf_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "split.txt"
    p.write_bytes(b"101_1b1_Al_sc_Meditron\ttest\r\n103_2b2_Ar_mc_LittC2SE\ttrain\r\n\r\n")
    assert read_split(p) == {"101_1b1_Al_sc_Meditron": "test", "103_2b2_Ar_mc_LittC2SE": "train"}
    p.write_text("101_1b1_Al_sc_Meditron\ttest\n103_2b2_Ar_mc_LittC2SE\tvalidation\n")
    with pytest.raises(DataError, match=rf"^{p}:2: split 'validation'"):
        read_split(p)
    p.write_text("101_1b1_Al_sc_Meditron test extra\n")
    with pytest.raises(DataError, match=rf"^{p}:1: expected"):
        read_split(p)
    p.write_text("101_1b1_Al_sc_Meditron\ttest\n101_1b1_Al_sc_Meditron\ttrain\n")
    with pytest.raises(DataError, match="both test and train"):
        read_split(p)


def test_resolve_split_device_quirks(tmp_path: Path) -> None:
    p = tmp_path / "ICBHI_challenge_train_test.txt"
    p.write_bytes(b"226_1b1_Al_sc_Meditron\ttrain\r\n226_1b1_Pl_sc_Meditron\ttrain\r\n"
                  b"101_1b1_Al_sc_Meditron\ttest\r\n104_1b1_Al_sc_Litt3200\ttest\r\n")
    split = read_split(p)
    stems = ["226_1b1_Pl_sc_LittC2SE",  # the official file's known mistake
             "101_1b1_Al_sc_AKGC417L",  # a filename_differences.txt case
             "104_1b1_Al_sc_Litt3200"]  # exact
    assert resolve_split(split, stems) == {"226_1b1_Pl_sc_LittC2SE": "train", "101_1b1_Al_sc_AKGC417L": "test",
                                           "104_1b1_Al_sc_Litt3200": "test"}
    # Same patient but another chest location is not the same recording.
    with pytest.raises(DataError, match="226_1b1_Ll_sc_LittC2SE: not listed"):
        resolve_split(split, ["226_1b1_Ll_sc_LittC2SE"])
    assert resolve_split(split, ["226_1b1_Ll_sc_LittC2SE"], fallback="patient") == {"226_1b1_Ll_sc_LittC2SE": "train"}
    assert resolve_split(split, ["999_1b1_Al_sc_Meditron"], fallback="test") == {"999_1b1_Al_sc_Meditron": "test"}
    with pytest.raises(DataError, match="nor is any other recording of patient 999"):
        resolve_split(split, ["999_1b1_Al_sc_Meditron"], fallback="patient")
    with pytest.raises(DataError, match="unknown split fallback"):
        resolve_split(split, [], fallback="random")


def test_resolve_split_ambiguous_loose_match() -> None:
    split = {"300_1b1_Al_sc_Meditron": "train", "300_1b1_Al_sc_AKGC417L": "test"}
    with pytest.raises(DataError, match="both train and test"):
        resolve_split(split, ["300_1b1_Al_sc_LittC2SE"])


def test_default_patient_split_is_deterministic_and_has_both_sides() -> None:
    split = default_patient_split([105, 101, 104, 102, 103, 101])
    assert split == {101: "train", 102: "test", 103: "train", 104: "test", 105: "train"}
    assert set(default_patient_split([7, 3]).values()) == {"train", "test"}


# --------------------------------------------------------------------------- synthetic folders


def _write_pair(folder: Path, stem: str, lines: list[str], seconds: float = 1.0, rate: int = 8000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_wav(folder / f"{stem}.wav", 0.1 * np.sin(np.arange(int(seconds * rate)) * 0.05), rate)
    (folder / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))


def test_list_recordings_pairs_split_and_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    audio = tmp_path / "audio_and_txt_files"
    _write_pair(audio, "301_1b1_Al_sc_Meditron", ["0 0.5 0 0"])
    _write_pair(audio, "302_1b1_Tc_sc_LittC2SE", ["0 0.5 1 0"])
    (tmp_path / "other").mkdir()
    write_wav(tmp_path / "other" / "303_1b1_Al_sc_Meditron.wav", np.zeros(800), 8000)  # no .txt beside it
    (tmp_path / "ICBHI_challenge_train_test.txt").write_text(
        "301_1b1_Al_sc_Meditron\ttrain\n302_1b1_Tc_sc_Meditron\ttest\n")
    with caplog.at_level(logging.WARNING, logger="stethoedge.data"):
        recs = list_recordings(tmp_path)
    assert [(r.stem, r.split, r.patient) for r in recs] == [
        ("301_1b1_Al_sc_Meditron", "train", 301), ("302_1b1_Tc_sc_LittC2SE", "test", 302)]
    assert "303_1b1_Al_sc_Meditron.wav: no annotation" in caplog.text
    assert recs[1].cycles() == [Cycle(0.0, 0.5, 1, 0)]
    # macOS resource forks beside the audio are not recordings.
    (audio / "._301_1b1_Al_sc_Meditron.wav").write_bytes(b"\x00\x05\x16\x07")
    (audio / "._301_1b1_Al_sc_Meditron.txt").write_bytes(b"\x00\x05\x16\x07")
    assert len(list_recordings(tmp_path)) == 2
    # An explicit split file wins over the one found under root.
    other = tmp_path / "mysplit.txt"
    other.write_text("301_1b1_Al_sc_Meditron\ttest\n302_1b1_Tc_sc_LittC2SE\ttrain\n")
    assert [r.split for r in list_recordings(tmp_path, split_file=other)] == ["test", "train"]
    other.write_text("301_1b1_Al_sc_Meditron\ttest\n")
    with pytest.raises(DataError, match=rf"^{other}: 302_1b1_Tc_sc_LittC2SE: not listed"):
        list_recordings(tmp_path, split_file=other)
    assert [r.split for r in list_recordings(tmp_path, split_file=other, split_fallback="train")] == ["test", "train"]


def test_list_recordings_without_split_file_uses_patient_split(tmp_path: Path) -> None:
    for p in (310, 311, 312):
        _write_pair(tmp_path, f"{p}_1b1_Al_sc_Meditron", ["0 0.5 0 0"])
        _write_pair(tmp_path, f"{p}_1b1_Ar_sc_Meditron", ["0 0.5 0 0"])
    recs = list_recordings(tmp_path)
    assert {(r.patient, r.split) for r in recs} == {(310, "train"), (311, "test"), (312, "train")}


def test_list_recordings_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        list_recordings(tmp_path / "missing")
    with pytest.raises(DataError, match="no <stem>.wav"):
        list_recordings(tmp_path)
    _write_pair(tmp_path / "a", "301_1b1_Al_sc_Meditron", ["0 0.5 0 0"])
    _write_pair(tmp_path / "b", "301_1b1_Al_sc_Meditron", ["0 0.5 0 0"])
    with pytest.raises(DataError, match="also exists"):
        list_recordings(tmp_path)
    bad = tmp_path / "c"
    _write_pair(bad, "notanicbhiname", ["0 0.5 0 0"])
    with pytest.raises(DataError, match="notanicbhiname.wav: 'notanicbhiname' is not an ICBHI recording name"):
        list_recordings(bad)


def test_load_cycles_clamps_and_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rate = 8000
    ramp = (np.arange(2 * rate) / (2 * rate) - 0.5).astype(np.float32)  # 2.0 s
    write_wav(tmp_path / "301_1b1_Al_sc_Meditron.wav", ramp, rate, subtype="FLOAT")
    (tmp_path / "301_1b1_Al_sc_Meditron.txt").write_text(
        "0.0 0.5 0 0\n0.5 1.25 1 1\n1.25 1.26 0 1\n1.26 2.5 0 1\n2.5 3.0 1 0\n")
    rec = list_recordings(tmp_path)[0]
    with caplog.at_level(logging.WARNING, logger="stethoedge.data"):
        cycles = load_cycles(rec, sample_rate=16000)
    assert [label for _, label in cycles] == [0, 3, 2]
    assert [a.shape[0] for a, _ in cycles] == [8000, 12000, 16000 * 2 - int(1.26 * 16000)]
    assert all(a.dtype == np.float32 for a, _ in cycles)
    assert "after the audio ends" in caplog.text and "shorter than 25 ms" in caplog.text
    # The cut follows the timeline: the clamped last cycle ends at the ramp's top.
    assert cycles[2][0][-50:].mean() == pytest.approx(0.5, abs=0.01)


# --------------------------------------------------------------------------- hold-out


def _holdout_fixture(tmp_path: Path) -> list[Recording]:
    rng = np.random.default_rng(5)
    stems_split = []
    for p in range(401, 413):
        # Only a few patients have wheezes / both, so coverage needs a search.
        flags = [(0, 0)] * 4 + [(1, 0)] * int(p % 3 == 0) * 3 + [(0, 1)] * int(p in (404, 409)) * 2 + \
            [(1, 1)] * int(p in (407, 410))
        for loc in ("Al", "Ar")[: 1 + int(rng.random() < 0.5)]:
            stem = f"{p}_1b1_{loc}_sc_Meditron"
            lines = [f"{k * 0.5:.3f} {k * 0.5 + 0.5:.3f} {c} {w}" for k, (c, w) in enumerate(flags)]
            _write_pair(tmp_path, stem, lines, seconds=0.1)
            stems_split.append(f"{stem}\t{'test' if p in (402, 411) else 'train'}\n")
    (tmp_path / "ICBHI_challenge_train_test.txt").write_text("".join(stems_split))
    return list_recordings(tmp_path)


def test_patient_holdout_groups_by_patient_and_is_deterministic(tmp_path: Path) -> None:
    recs = _holdout_fixture(tmp_path)
    train, val = patient_holdout(recs, fraction=0.25, seed=0)
    assert val and train
    assert {r.patient for r in train}.isdisjoint({r.patient for r in val})
    assert all(r.split == "train" for r in train + val)
    assert {r.stem for r in train + val} == {r.stem for r in recs if r.split == "train"}
    assert {c.label for r in val for c in r.cycles()} == {0, 1, 2, 3}
    assert {c.label for r in train for c in r.cycles()} == {0, 1, 2, 3}
    again = patient_holdout(recs, fraction=0.25, seed=0)
    assert [r.stem for r in again[1]] == [r.stem for r in val]
    n_val = sum(len(r.cycles()) for r in val)
    n_all = sum(len(r.cycles()) for r in train + val)
    assert 0.1 < n_val / n_all < 0.45


def test_patient_holdout_edge_cases(tmp_path: Path) -> None:
    recs = _holdout_fixture(tmp_path)
    assert patient_holdout(recs, fraction=0.0)[1] == []
    with pytest.raises(DataError, match="fraction"):
        patient_holdout(recs, fraction=1.0)
    one_patient = [r for r in recs if r.patient == 401]
    with pytest.raises(DataError, match="2\\+ training patients"):
        patient_holdout(one_patient)
    with pytest.raises(DataError, match="no training recordings"):
        patient_holdout([r for r in recs if r.split == "test"])


# --------------------------------------------------------------------------- the real sample


def test_real_sample_recordings_cycles_and_split() -> None:
    root = icbhi_sample_dir()
    recs = list_recordings(root)
    assert len(recs) == 13
    cycles = [c for r in recs for c in r.cycles()]
    assert len(cycles) == 123
    assert sum(c.crackles for c in cycles) == 9
    assert sum(c.wheezes for c in cycles) == 21
    assert sum(c.label == 3 for c in cycles) == 0
    by_patient = {r.patient: r.split for r in recs}
    assert by_patient == {101: "test", 102: "test", 104: "test", 103: "train", 105: "train", 106: "train"}
    assert sorted({r.info.device for r in recs}) == ["Litt3200", "LittC2SE", "Meditron"]


def test_real_split_file_resolves_the_226_quirk() -> None:
    split = read_split(icbhi_sample_dir() / "ICBHI_challenge_train_test.txt")
    assert len(split) == 920 and sum(v == "train" for v in split.values()) == 539
    assert "226_1b1_Pl_sc_LittC2SE" not in split
    assert resolve_split(split, ["226_1b1_Pl_sc_LittC2SE", "101_1b1_Pr_sc_AKGC417L"]) == {
        "226_1b1_Pl_sc_LittC2SE": "train", "101_1b1_Pr_sc_AKGC417L": "test"}


@pytest.mark.parametrize("stem, rate, subtype", [
    ("101_1b1_Al_sc_Meditron", 44100, "PCM_24"),
    ("102_1b1_Ar_sc_Meditron", 44100, "PCM_16"),
    ("104_1b1_Ar_sc_Litt3200", 4000, "PCM_16"),
])
def test_real_sample_loads_at_16k_with_right_duration(stem: str, rate: int, subtype: str) -> None:
    root = icbhi_sample_dir()
    rec = next(r for r in list_recordings(root) if r.stem == stem)
    info = sf.info(str(rec.wav_path))
    assert (info.samplerate, info.subtype) == (rate, subtype)
    cycles = load_cycles(rec)
    annotated = rec.cycles()
    assert len(cycles) == len(annotated)
    assert [label for _, label in cycles] == [c.label for c in annotated]
    expected_total = info.frames * 16000 / rate
    assert abs(load_audio(rec.wav_path).samples.shape[0] - expected_total) <= 1
    for (audio, _), c in zip(cycles, annotated):
        assert audio.dtype == np.float32
        assert abs(audio.shape[0] - (min(c.end_s, info.duration) - c.start_s) * 16000) <= 2


def test_real_sample_holdout_and_full_load() -> None:
    recs = list_recordings(icbhi_sample_dir())
    train, val = patient_holdout(recs, fraction=0.2, seed=0)
    assert {r.patient for r in train + val} == {103, 105, 106}
    assert len({r.patient for r in val}) == 1 and {r.patient for r in train}.isdisjoint({r.patient for r in val})
    labels = [label for r in recs for _, label in load_cycles(r)]
    assert len(labels) == 123 and np.bincount(labels, minlength=4).tolist() == [93, 9, 21, 0]
