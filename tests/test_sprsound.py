"""SPRSound parser (train/sprsound.py) on hand-made files and on the real release, and the ICBHI loader on
the FLAC copy of the ICBHI training set."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.labels import CLASSES
from stethoedge.train.sprsound import (EVENT_TO_CLASS, EVENT_TYPES, Event, event_counts, list_records, load_events,
                                       parse_annotation, parse_stem)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPRSOUND = SHARED / "data" / "sprsound"
ICBHI_16K = SHARED / "data" / "icbhi_train16k"


def _write_json(path: Path, data, encoding: str = "utf-8") -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding=encoding)
    return path


def _ann(*events: tuple, record: str = "CAS") -> dict:
    return {"record_annotation": record,
            "event_annotation": [{"start": s, "end": e, "type": t} for s, e, t in events]}


# ------------------------------------------------------------------------------------ names, labels


def test_event_mapping():
    assert set(EVENT_TO_CLASS) == set(EVENT_TYPES)
    by_class = {c: sorted(t for t, k in EVENT_TO_CLASS.items() if CLASSES[k] == c) for c in CLASSES}
    assert by_class == {"normal": ["Normal"], "crackle": ["Coarse Crackle", "Fine Crackle"],
                        "wheeze": ["Rhonchi", "Stridor", "Wheeze"], "both": ["Wheeze+Crackle"]}
    assert Event(0.0, 1.0, "Stridor").label == CLASSES.index("wheeze")


def test_parse_stem():
    assert parse_stem("40490865_8.4_1_p1_1884") == ("40490865", 8.4, 1, "p1")
    assert parse_stem("_65000123_0.5_0_p4_7") == ("_65000123", 0.5, 0, "p4")  # anonymised patient
    for bad in ("40490865_8.4_2_p1_1884", "40490865_8.4_1_p1", "x_8.4_1_p1_1", "40490865_old_1_p1_1884"):
        with pytest.raises(DataError, match=re.escape(bad)):
            parse_stem(bad)


@pytest.mark.parametrize("location", ["p0", "p5", "p9"])
def test_parse_stem_rejects_locations_outside_p1_to_p4(location):
    # the release has four auscultation locations, p1..p4, as the error message itself says
    stem = f"40490865_8.4_1_{location}_1884"
    with pytest.raises(DataError, match=r"<p1\.\.p4>"):
        parse_stem(stem)


# ---------------------------------------------------------------------------- hand-made annotations


def test_parse_annotation_good_file(tmp_path):
    path = _write_json(tmp_path / "a.json", _ann(("299", "2009", "Normal"), (2100, 2800.5, "Fine Crackle")))
    record, events = parse_annotation(path)
    assert record == "CAS"
    assert events == (Event(0.299, 2.009, "Normal"), Event(2.1, 2.8005, "Fine Crackle"))


def test_parse_annotation_accepts_bom_and_poor_quality_without_events(tmp_path):
    path = _write_json(tmp_path / "bom.json", _ann(("0", "500", "Wheeze")), encoding="utf-8-sig")
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert parse_annotation(path) == ("CAS", (Event(0.0, 0.5, "Wheeze"),))
    for data in ({"record_annotation": "Poor Quality", "event_annotation": []}, {"record_annotation": "Poor Quality"}):
        assert parse_annotation(_write_json(tmp_path / "pq.json", data)) == ("Poor Quality", ())


@pytest.mark.parametrize("data, message", [
    (_ann(("0", "500", "Normal"), record="Abnormal"), "record_annotation 'Abnormal'"),
    ({"event_annotation": []}, "record_annotation None"),
    ([1, 2], "record_annotation None"),
    (_ann(("abc", "500", "Normal")), "event 0 needs numeric start/end"),
    (_ann(("0", "500", "Normal"), ("600", "900", "Squawk")), "event 1 type 'Squawk'"),
    (_ann(("0", "500", "Normal"), ("900", "900", "Wheeze")), "event 1 has start 0.900 s >= end 0.900 s"),
    (_ann(("1000", "500", "Normal")), "event 0 has start 1.000 s >= end 0.500 s"),
    (_ann(("-10", "500", "Normal")), "event 0 has start"),
    ({"record_annotation": "CAS", "event_annotation": [{"start": "0", "type": "Wheeze"}]}, "event 0 needs"),
    ("{not json", "unreadable annotation"),
    # found by benchmarks/fuzz_sprsound.py (atheris): an int here was a TypeError traceback
    ({"record_annotation": "DAS", "event_annotation": -1}, "event_annotation must be a list of events, got int"),
    ({"record_annotation": "DAS", "event_annotation": "Wheeze"}, "event_annotation must be a list"),
    (_ann(("0", "inf", "Wheeze")), "event 0 has a non-finite time (start 0.0 s, end inf s)"),
    (_ann(("nan", "500", "Wheeze")), "event 0 has a non-finite time"),
    ({"record_annotation": "CAS", "event_annotation": [["0", "500", "Wheeze"]]}, "event 0 needs"),
], ids=["record-label", "no-record", "not-a-dict", "non-numeric", "unknown-type", "empty-event", "reversed",
        "negative", "no-end", "bad-json", "events-an-int", "events-a-string", "end-infinite", "start-nan",
        "event-a-list"])
def test_parse_annotation_errors_name_the_file(tmp_path, data, message):
    path = _write_json(tmp_path / "123_4.5_0_p1_9.json", data)
    with pytest.raises(DataError, match=re.escape(str(path))) as err:
        parse_annotation(path)
    assert message in str(err.value)


def test_parse_annotation_rejects_non_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"record_annotation": "Normal\xe9"}')
    with pytest.raises(DataError, match="unreadable annotation"):
        parse_annotation(path)


def _tiny_release(root: Path) -> Path:
    """Three splits, one 2 s 8 kHz recording each (train also an audio file without annotation)."""
    rate = 8000
    tone = (0.1 * np.sin(2 * np.pi * 200 * np.arange(2 * rate) / rate)).astype(np.float32)
    for folder, stem in (("train2022", "11_3.0_1_p2_1"), ("test2022_inter", "22_5.5_0_p3_2"),
                         ("test2022_intra", "11_3.0_1_p1_3")):
        (root / folder).mkdir(parents=True)
        sf.write(root / folder / f"{stem}.flac", tone, rate)
        _write_json(root / folder / f"{stem}.json", _ann(("100", "600", "Normal"), ("700", "1900", "Rhonchi")))
    sf.write(root / "train2022" / "33_1.0_0_p1_4.wav", tone, rate)  # no annotation beside it: skipped
    return root


def test_list_records_and_load_events_on_a_tiny_release(tmp_path):
    root = _tiny_release(tmp_path / "spr")
    records = list_records(root)
    assert [(r.stem, r.split, r.patient, r.location) for r in records] == [
        ("11_3.0_1_p2_1", "train", "11", "p2"), ("22_5.5_0_p3_2", "test-inter", "22", "p3"),
        ("11_3.0_1_p1_3", "test-intra", "11", "p1")]
    assert event_counts(records)["Rhonchi"] == 3 and event_counts(records)["wheeze"] == 3
    assert [r.stem for r in list_records(root, ("test2022_inter",))] == ["22_5.5_0_p3_2"]
    segments = load_events(records[0], 16000)
    assert [len(a) for a, _ in segments] == [8000, 19200]  # 0.5 s and 1.2 s at 16 kHz
    assert all(a.dtype == np.float32 for a, _ in segments)
    with pytest.raises(DataError, match="not an SPRSound split"):
        list_records(root, ("val2022",))
    with pytest.raises(DataError, match="missing SPRSound split folder"):
        list_records(tmp_path, ("train2022",))
    with pytest.raises(DataError, match="not a directory"):
        list_records(tmp_path / "absent")


def test_load_events_skips_events_outside_the_audio(tmp_path):
    root = _tiny_release(tmp_path / "spr")
    _write_json(root / "train2022" / "11_3.0_1_p2_1.json", _ann(("100", "600", "Normal"), ("2500", "3000", "Wheeze"),
                                                                ("1990", "2500", "Wheeze")))
    record = list_records(root, ("train2022",))[0]
    segments = load_events(record)
    assert [ev.start_s for _, ev in segments] == [0.1]  # one past the end, one clamped to 10 ms


# ------------------------------------------------------------------------------------- real release


@pytest.fixture(scope="module")
def spr_records():
    if not (SPRSOUND / "train2022").is_dir():
        pytest.skip(f"real SPRSound release not present: place it at {SPRSOUND}")
    return list_records(SPRSOUND)


def test_real_release_counts_match_its_readme(spr_records):
    by_split = {s: [r for r in spr_records if r.split == s] for s in ("train", "test-inter", "test-intra")}
    assert {s: len(rs) for s, rs in by_split.items()} == {"train": 1949, "test-inter": 355, "test-intra": 379}
    counts = event_counts(by_split["train"])
    assert {t: counts[t] for t in EVENT_TYPES} == {"Normal": 5159, "Fine Crackle": 912, "Coarse Crackle": 49,
                                                    "Wheeze": 452, "Rhonchi": 39, "Stridor": 15, "Wheeze+Crackle": 30}
    assert {c: counts[c] for c in CLASSES} == {"normal": 5159, "crackle": 961, "wheeze": 506, "both": 30}
    inter = event_counts(by_split["test-inter"])
    assert {t: inter[t] for t in EVENT_TYPES} == {"Normal": 1040, "Fine Crackle": 80, "Coarse Crackle": 3,
                                                   "Wheeze": 305, "Rhonchi": 0, "Stridor": 0, "Wheeze+Crackle": 1}
    assert Counter(r.record_label for r in by_split["train"]) == {"Normal": 1303, "DAS": 248, "CAS": 126,
                                                                  "CAS & DAS": 95, "Poor Quality": 177}
    assert all(not r.events for r in spr_records if r.record_label == "Poor Quality")


def test_real_release_patients(spr_records):
    patients = {s: {r.patient for r in spr_records if r.split == s} for s in ("train", "test-inter", "test-intra")}
    assert len(patients["train"]) == 251 and len(patients["test-inter"]) == 41 and len(patients["test-intra"]) == 162
    assert not patients["test-inter"] & patients["train"]
    assert patients["test-intra"] <= patients["train"]


def test_real_release_load_events_of_one_record(spr_records):
    record = next(r for r in spr_records if r.split == "train" and len(r.events) >= 3)
    segments = load_events(record, 16000)
    assert len(segments) == len(record.events)
    for audio, ev in segments:
        assert audio.dtype == np.float32 and np.isfinite(audio).all() and np.abs(audio).max() > 0
        assert abs(len(audio) - (ev.end_s - ev.start_s) * 16000) <= 2, ev


# ------------------------------------------------------------------------------------ ICBHI as FLAC


def test_icbhi_loader_reads_flac():
    from stethoedge.train.icbhi import list_recordings, load_cycles

    if not (ICBHI_16K / "audio_and_txt_files").is_dir():
        pytest.skip(f"ICBHI 16 kHz FLAC training set not present: place it at {ICBHI_16K}")
    recordings = list_recordings(ICBHI_16K)
    assert len(recordings) == 53
    assert all(r.wav_path.suffix == ".flac" for r in recordings)
    first = recordings[0]
    cycles = load_cycles(first)
    assert len(cycles) == len(first.cycles()) > 0
    for (audio, label), cycle in zip(cycles, first.cycles()):
        assert label == cycle.label and audio.dtype == np.float32
        assert abs(len(audio) - (cycle.end_s - cycle.start_s) * 16000) <= 2
