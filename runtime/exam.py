"""An examination: several recordings (chest sites) of one patient aggregated into one verdict with evidence.

A window is one decision of the stream engine (``WindowResult``). An exam groups the windows of
each site's recordings and applies the rules below (``ExamRules``; README "Examination" and
MODEL_CARD.md state them with the constants and their measured performance):

* **Usable window**: not abstained. A window abstains when the runtime says so (``abstained``, or
  its ``label`` is ``poor_quality`` / ``uncertain``, or its ``quality`` is a reason other than
  ``ok`` / ``unchecked``); where the quality gate did not run (``quality == "unchecked"``) a window
  the engine flagged as digital silence abstains as ``poor_quality`` (silence). Abstained windows
  are never evidence; they are counted and reported, by reason.
* **Evidence**: a usable window is evidence of crackle when P(crackle) + P(both) >= ``evidence_prob``,
  of wheeze when P(wheeze) + P(both) >= ``evidence_prob`` (the calibrated probabilities when the
  bundle is calibrated, the softmax otherwise).
* **Site finding**: fewer than ``min_usable_windows`` usable windows: ``poor_quality`` when most
  of its windows abstained for signal quality, else ``inconclusive``. Otherwise ``crackle`` /
  ``wheeze`` / ``both`` when at least ``min_evidence_windows`` windows, and at least
  ``min_evidence_fraction`` of its usable windows, are evidence of that sound (both sounds: ``both``),
  else ``normal``. A site whose every recording failed to decode is ``error``.
* **Patient verdict**: ``adventitious`` (with the sounds found: crackle, wheeze or both) when any
  site has an adventitious finding; else ``normal`` when at least one site is normal; else
  ``poor_quality`` when the sites that gave no answer are mostly poor quality; else ``inconclusive``.

Torch-free; imports nothing from train/ or export/.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from stethoedge.runtime.errors import AudioError, StethoedgeError

__all__ = ["ABSTAIN_LABELS", "ExamRules", "Recording", "SiteResult", "ExamVerdict", "Exam", "parse_site",
           "recordings_from_files", "recordings_from_site_labels", "recordings_from_dir", "window_view",
           "site_finding", "aggregate", "run_exam", "QUALITY_HINTS", "quality_hint"]

#: Decisions that are not a class: the window abstained.
ABSTAIN_LABELS = ("poor_quality", "uncertain")
#: Quality states that are not a reason to abstain.
QUALITY_OK = ("ok", "unchecked")
#: What to tell the person holding the chest piece, per quality reason (``listen`` shows it live).
QUALITY_HINTS: dict[str, str] = {
    "no_contact": "no contact — press the chest piece onto the skin",
    "friction": "friction — hold the chest piece still",
    "speech": "speech — ask the patient to stay quiet",
    "clipping": "clipping — too loud: lower the gain or press more gently",
    "silence": "silence — no signal: check the microphone and the connection",
    "knock": "knock — a bump or tap: keep the tubing and chest piece still",
    "heart_dominant": "heart sounds dominate — move away from the heart",
    "unknown": "poor signal — reposition the chest piece",
}
ADVENTITIOUS = ("crackle", "wheeze", "both")

# ICBHI 2017: patient_recordingindex_location_mode_device, e.g. 101_1b1_Al_sc_Meditron.
_ICBHI = re.compile(r"^(\d{3})_(\d+[a-z]\d+)_(Tc|Al|Ar|Pl|Pr|Ll|Lr)_(sc|mc)_([A-Za-z0-9]+)$")
ICBHI_SITES = {"Tc": "trachea", "Al": "anterior left", "Ar": "anterior right", "Pl": "posterior left",
               "Pr": "posterior right", "Ll": "lateral left", "Lr": "lateral right"}
# SPRSound 2022: patientid_age_sex_location_recordingid, e.g. 40512331_8.1_1_p1_3544 (a leading _ is kept).
_SPRSOUND = re.compile(r"^(_?\d+)_([\d.]+)_([01])_(p[1-4])_(\d+)$")


@dataclass(frozen=True)
class ExamRules:
    """Constants of the exam rules (module docstring). Defaults chosen on SPRSound validation patients
    (train/exam_eval.py, models/reports/exam-evaluation.md)."""

    evidence_prob: float = 0.65  # a usable window with P(sound) + P(both) >= this is evidence of the sound
    min_evidence_windows: int = 2  # a site has a sound when at least this many windows are evidence of it...
    min_evidence_fraction: float = 0.5  # ...and at least this share of its usable windows are
    min_usable_windows: int = 2  # fewer usable windows: the site gives no answer (poor quality / inconclusive)

    def needed(self, usable: int) -> int:
        """Evidence windows a site with ``usable`` usable windows needs for a sound."""
        return max(self.min_evidence_windows, math.ceil(self.min_evidence_fraction * usable - 1e-9))

    def __post_init__(self) -> None:
        if not 0.0 < self.evidence_prob <= 1.0:
            raise ValueError(f"evidence_prob must be in (0, 1], got {self.evidence_prob}")
        if not 0.0 <= self.min_evidence_fraction <= 1.0:
            raise ValueError(f"min_evidence_fraction must be in [0, 1], got {self.min_evidence_fraction}")
        if self.min_evidence_windows < 1 or self.min_usable_windows < 1:
            raise ValueError("min_evidence_windows and min_usable_windows must be at least 1")


@dataclass(frozen=True)
class Recording:
    """One recording of the exam: its file, the site it was taken at, the patient (when known)."""

    path: str
    site: str
    patient: str | None = None


def parse_site(name: str) -> tuple[str | None, str | None]:
    """(patient, site) from an ICBHI or SPRSound file name (stem or path); (None, None) for other names.

    ICBHI ``101_1b1_Al_sc_Meditron``: patient 101, site ``Al`` (anterior left; Tc, Al, Ar, Pl, Pr, Ll, Lr).
    SPRSound ``40512331_8.1_1_p1_3544``: patient 40512331, site ``p1`` (chest sites p1..p4).
    """
    from stethoedge.runtime.audio_io import AUDIO_SUFFIXES

    stem = Path(name).name
    suffix = Path(stem).suffix.lower()
    if suffix in AUDIO_SUFFIXES or suffix in (".json", ".txt"):  # not "40512331_8.1_..." (a dot in the age)
        stem = stem[: -len(suffix)]
    m = _ICBHI.match(stem)
    if m:
        return m.group(1), m.group(3)
    m = _SPRSOUND.match(stem)
    if m:
        return m.group(1), m.group(4)
    return None, None


def _from_path(path: str) -> Recording:
    patient, site = parse_site(path)
    return Recording(str(path), site or Path(path).stem, patient)


def recordings_from_files(paths: Iterable[str | os.PathLike]) -> list[Recording]:
    """Recordings named on the command line: site and patient from ICBHI / SPRSound names, else the file stem."""
    return [_from_path(os.fspath(p)) for p in paths]


def recordings_from_site_labels(labels: Iterable[str]) -> list[Recording]:
    """``NAME=FILE`` labels (``--site``): the site is NAME; the patient still comes from the file name when it has one."""
    out = []
    for text in labels:
        name, sep, path = text.partition("=")
        if not sep or not name.strip() or not path:
            raise AudioError(f"--site {text!r}: expected NAME=FILE, e.g. --site 'left base=rec1.wav'")
        out.append(Recording(path, name.strip(), parse_site(path)[0]))
    return out


def recordings_from_dir(directory: str | os.PathLike) -> list[Recording]:
    """Every audio file directly in ``directory`` (hidden files skipped), sorted by name; site and patient
    from each name. A name with no patient id belongs to the patient named after the folder."""
    from stethoedge.runtime.batch import list_audio

    d = Path(directory)
    if not d.is_dir():
        raise AudioError(f"{directory}: not a directory")
    out = []
    for path in list_audio(d):
        r = _from_path(str(path))
        out.append(r if r.patient is not None else Recording(r.path, r.site, d.resolve().name))
    return out


def _get(w: Any, name: str, default: Any = None) -> Any:
    return w.get(name, default) if isinstance(w, dict) else getattr(w, name, default)


def window_view(w: Any) -> dict[str, Any]:
    """The fields the exam reads of one window (a WindowResult or its JSON record), with defaults for fields
    an older runtime lacks, and whether and why it abstained."""
    label = _get(w, "label", "")
    quality = _get(w, "quality", "unchecked") or "unchecked"
    warnings = list(_get(w, "warnings", ()) or ())
    abstained = bool(_get(w, "abstained", False)) or label in ABSTAIN_LABELS or quality not in QUALITY_OK
    reason = _get(w, "abstain_reason", None)
    if not abstained and quality == "unchecked" and any(str(x).startswith("silent window") for x in warnings):
        abstained, quality = True, "silence"  # no quality gate ran: the engine's own silence flag stands in
    # Grouped as the exam reports them: poor_quality (the signal) or uncertain (low confidence, any other reason).
    group = None
    if abstained:
        group = "poor_quality" if (label == "poor_quality" or quality not in QUALITY_OK or reason == "poor_quality") \
            else "uncertain"
    probs = dict(_get(w, "probabilities", {}) or {})
    return {"start_s": float(_get(w, "start_s", 0.0)), "end_s": float(_get(w, "end_s", 0.0)), "label": label,
            "model_label": _get(w, "model_label", None) or (max(probs, key=probs.get) if probs else None),
            "confidence": float(_get(w, "confidence", 0.0) or 0.0), "probabilities": probs, "quality": quality,
            "quality_score": _get(w, "quality_score", None), "abstained": abstained, "abstain_reason": group,
            "runtime_abstain_reason": reason,
            "warnings": warnings}


def quality_hint(w: Any) -> str | None:
    """What to tell the person holding the chest piece about this window's signal (``QUALITY_HINTS``), or None
    when its quality is ok or unchecked (``listen`` prints it live, before the window's label)."""
    quality = window_view(w)["quality"]
    if quality in QUALITY_OK:
        return None
    return QUALITY_HINTS.get(quality, f"{quality.replace('_', ' ')} — " + QUALITY_HINTS["unknown"].split(" — ")[1])


def _p(probs: dict[str, float], sound: str) -> float:
    return float(probs.get(sound, 0.0)) + float(probs.get("both", 0.0))


@dataclass
class SiteResult:
    """One site: its recordings, every window (decision, quality, evidence), counts, and its finding."""

    site: str
    recordings: list[str]
    finding: str  # normal | crackle | wheeze | both | inconclusive | poor_quality | error
    windows: list[dict[str, Any]] = field(default_factory=list)  # window_view + "recording", "evidence"
    n_windows: int = 0
    n_usable: int = 0
    n_abstained: int = 0
    abstained_by_reason: dict[str, int] = field(default_factory=dict)  # poor_quality / uncertain
    quality_counts: dict[str, int] = field(default_factory=dict)  # every window's quality state
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)  # sound -> windows, mean probability
    mean_probabilities: dict[str, float] = field(default_factory=dict)  # over usable windows
    errors: list[str] = field(default_factory=list)  # recordings that could not be classified
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def site_finding(site: str, windows: Sequence[Any], rules: ExamRules, recordings: Sequence[str] = (),
                 errors: Sequence[str] = (), recording_of: Sequence[str] | None = None) -> SiteResult:
    """Apply the site rule (module docstring) to the windows of one site."""
    views = []
    for i, w in enumerate(windows):
        v = window_view(w)
        v["recording"] = recording_of[i] if recording_of is not None else (recordings[0] if recordings else "")
        v["evidence"] = [] if v["abstained"] else [s for s in ("crackle", "wheeze")
                                                   if _p(v["probabilities"], s) >= rules.evidence_prob]
        views.append(v)
    usable = [v for v in views if not v["abstained"]]
    by_reason: dict[str, int] = {}
    quality: dict[str, int] = {}
    for v in views:
        quality[v["quality"]] = quality.get(v["quality"], 0) + 1
        if v["abstained"]:
            by_reason[v["abstain_reason"]] = by_reason.get(v["abstain_reason"], 0) + 1
    evidence: dict[str, dict[str, Any]] = {}
    for sound in ("crackle", "wheeze"):
        hits = [v for v in usable if sound in v["evidence"]]
        evidence[sound] = {"windows": len(hits), "times": [[v["start_s"], v["end_s"]] for v in hits],
                           "recordings": sorted({v["recording"] for v in hits}),
                           "mean_probability": (sum(_p(v["probabilities"], sound) for v in hits) / len(hits))
                           if hits else None}
    labels = sorted({k for v in usable for k in v["probabilities"]})
    mean = {k: sum(float(v["probabilities"].get(k, 0.0)) for v in usable) / len(usable) for k in labels} if usable else {}
    if not views and errors:
        finding = "error"
    elif len(usable) < rules.min_usable_windows:
        poor = by_reason.get("poor_quality", 0)
        finding = "poor_quality" if poor > 0 and poor >= len(views) - poor else "inconclusive"
    else:
        found = [s for s in ("crackle", "wheeze") if evidence[s]["windows"] >= rules.needed(len(usable))]
        finding = "both" if len(found) == 2 else found[0] if found else "normal"
    return SiteResult(site=site, recordings=list(recordings), finding=finding, windows=views, n_windows=len(views),
                      n_usable=len(usable), n_abstained=len(views) - len(usable), abstained_by_reason=by_reason,
                      quality_counts=quality, evidence=evidence, mean_probabilities=mean, errors=list(errors))


@dataclass
class ExamVerdict:
    """The patient's verdict with its evidence: every site's result and the rules that made it."""

    patient: str | None
    verdict: str  # normal | adventitious | inconclusive | poor_quality
    sounds: list[str]  # adventitious sounds found (crackle, wheeze), empty otherwise
    summary: str  # one sentence a person reads
    sites: list[SiteResult]
    rules: ExamRules
    n_windows: int = 0
    n_usable: int = 0
    n_abstained: int = 0
    failed_recordings: int = 0

    @property
    def label(self) -> str:
        """The verdict as one word: normal, crackle, wheeze, both, inconclusive or poor_quality."""
        if self.verdict != "adventitious":
            return self.verdict
        return "both" if len(self.sounds) == 2 else self.sounds[0]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the report's data)."""
        return {"patient": self.patient, "verdict": self.verdict, "label": self.label, "sounds": self.sounds,
                "summary": self.summary, "n_windows": self.n_windows, "n_usable": self.n_usable,
                "n_abstained": self.n_abstained, "failed_recordings": self.failed_recordings,
                "rules": asdict(self.rules), "sites": [s.to_json() for s in self.sites]}


def aggregate(sites: Sequence[SiteResult], rules: ExamRules, patient: str | None = None) -> ExamVerdict:
    """The patient rule (module docstring) over the site results."""
    sounds = sorted({s for r in sites if r.finding in ADVENTITIOUS
                     for s in (("crackle", "wheeze") if r.finding == "both" else (r.finding,))})
    n_win, n_use = sum(r.n_windows for r in sites), sum(r.n_usable for r in sites)
    failed = sum(len(r.errors) for r in sites)
    if sounds:
        verdict = "adventitious"
        where = ", ".join(f"{r.site} ({r.finding})" for r in sites if r.finding in ADVENTITIOUS)
        summary = f"adventitious sounds: {' and '.join(sounds)} at {where}"
    elif any(r.finding == "normal" for r in sites):
        verdict = "normal"
        normal = [r.site for r in sites if r.finding == "normal"]
        rest = [f"{r.site} ({r.finding})" for r in sites if r.finding != "normal"]
        summary = f"normal at {', '.join(normal)}" + (f"; no answer at {', '.join(rest)}" if rest else "")
    else:
        poor = sum(r.finding == "poor_quality" for r in sites)
        verdict = "poor_quality" if poor and poor >= len(sites) - poor else "inconclusive"
        summary = ("poor quality: too few usable windows at every site; record again" if verdict == "poor_quality"
                   else "inconclusive: too few usable windows at every site")
    summary += f" — {n_use} of {n_win} windows usable"
    return ExamVerdict(patient=patient, verdict=verdict, sounds=sounds, summary=summary, sites=list(sites), rules=rules,
                       n_windows=n_win, n_usable=n_use, n_abstained=n_win - n_use, failed_recordings=failed)


@dataclass
class Exam:
    """A session: the recordings of one patient, grouped by site in the order first named."""

    recordings: list[Recording]
    patient: str | None = None

    @classmethod
    def of(cls, recordings: Sequence[Recording], allow_mixed: bool = False, patient: str | None = None) -> Exam:
        """An exam of ``recordings``; recordings of several patients are refused (AudioError naming them)
        unless ``allow_mixed``, or ``patient`` picks one of them."""
        if not recordings:
            raise AudioError("no recordings to examine")
        if patient is not None:
            chosen = [r for r in recordings if r.patient == patient]
            if not chosen:
                known = sorted({r.patient for r in recordings if r.patient})
                raise AudioError(f"no recording of patient {patient} (patients found: {', '.join(known) or 'none'})")
            recordings = chosen
        patients = sorted({r.patient for r in recordings if r.patient is not None})
        if len(patients) > 1 and not allow_mixed:
            counts = ", ".join(f"{p} ({sum(r.patient == p for r in recordings)})" for p in patients)
            raise AudioError(f"recordings of {len(patients)} patients: {counts}; examine one patient at a time "
                             "(--patient ID), or pass --allow-mixed to treat them as one session")
        return cls(list(recordings), patients[0] if len(patients) == 1 else ("mixed" if patients else None))

    def sites(self) -> dict[str, list[Recording]]:
        """Site name -> its recordings, in the order first named."""
        out: dict[str, list[Recording]] = {}
        for r in self.recordings:
            out.setdefault(r.site, []).append(r)
        return out


def _classify(classifier: Any, path: str, hop_s: float, min_s: float) -> tuple[list[Any], list[str]]:
    from stethoedge.runtime.sources import FileSource

    source = FileSource(path)
    try:
        windows = list(classifier.classify(source, hop_s=hop_s, min_s=min_s))
    finally:
        source.close()
    return windows, list(source.warnings)


def run_exam(classifier: Any, recordings: Exam | Sequence[Recording], rules: ExamRules | None = None,
             hop_s: float = 2.0, min_s: float = 2.0) -> ExamVerdict:
    """Classify every recording (``Classifier.classify``), apply the site and patient rules.

    A recording that cannot be read or classified is reported in its site's ``errors`` (one line),
    never raised; the verdict comes from the rest.
    """
    exam = recordings if isinstance(recordings, Exam) else Exam.of(recordings, allow_mixed=True)
    rules = rules or ExamRules()
    results = []
    for site, recs in exam.sites().items():
        windows: list[Any] = []
        owner: list[str] = []
        errors: list[str] = []
        warnings: list[str] = []
        for r in recs:
            try:
                got, warned = _classify(classifier, r.path, hop_s, min_s)
            except StethoedgeError as exc:
                errors.append(str(exc))
                continue
            windows += got
            owner += [r.path] * len(got)
            warnings += [f"{r.path}: {w}" if r.path not in w else w for w in warned]
        res = site_finding(site, windows, rules, [r.path for r in recs], errors, owner)
        res.warnings = warnings
        results.append(res)
    return aggregate(results, rules, exam.patient)
