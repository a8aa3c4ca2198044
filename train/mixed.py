"""Mixed-N datasets: N generated cycles per class written in the ICBHI layout for ``TrainConfig.synthetic``.

``plan_counts`` says how many samples each class gets (``per-class``: N each; ``minority``: N for
every class but the largest; ``balance``: top every class up to the largest, at most N each when
N > 0). ``synthesize_waveforms`` turns a generator's mels into audio through the DiffWave vocoder
(or re-synthesises real mels when the generator IS the vocoder). ``write_icbhi_dir`` writes
``audio_and_txt_files/<patient>_<index>_Tc_sc_Synth<Kind>.wav`` + ``.txt`` (one cycle spanning the
file with its crackle/wheeze flags), a split file listing everything as train, and
``synthetic.json`` (provenance); the directory appears atomically (built aside, then renamed).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.labels import CLASSES
from stethoedge.runtime.outputs import check_output_dir, install_dir, signals_held, temp_dir_beside
from stethoedge.train.generators.base import MelGenerator, MelSet
from stethoedge.train.generators.diffwave import DiffWaveVocoder
from stethoedge.data.icbhi import SPLIT_FILENAME

MODES: tuple[str, ...] = ("per-class", "minority", "balance")
#: Synthetic patients are numbered from here (class index added), far from ICBHI's 101-226.
SYNTHETIC_PATIENT_BASE = 9000


def plan_counts(class_counts: Sequence[int], n: int, mode: str = "per-class",
                classes: Sequence[int] | None = None) -> dict[int, int]:
    """Synthetic samples per class index for a Mixed-N set; ``classes`` limits it (e.g. a generator's)."""
    if mode not in MODES:
        raise DataError(f"unknown Mixed-N mode {mode!r}; use one of {', '.join(MODES)}")
    if n < 0 or (n == 0 and mode != "balance"):
        raise DataError(f"N must be positive (0 only with balance), got {n}")
    allowed = list(range(len(CLASSES))) if classes is None else list(classes)
    counts = np.asarray(class_counts, dtype=np.int64)
    largest = int(np.argmax(counts))
    if mode == "per-class":
        plan = {c: n for c in allowed}
    elif mode == "minority":
        plan = {c: n for c in allowed if c != largest}
    else:
        plan = {c: int(counts[largest] - counts[c]) for c in allowed}
        plan = {c: (min(k, n) if n > 0 else k) for c, k in plan.items()}
    return {c: k for c, k in plan.items() if k > 0}


def _renormalise(mels: torch.Tensor, src: MelGenerator, dst: MelGenerator) -> torch.Tensor:
    if (src.spec.norm_mean, src.spec.norm_std) == (dst.spec.norm_mean, dst.spec.norm_std):
        return mels
    raw = mels * (2 * src.spec.norm_std) + src.spec.norm_mean
    return (raw - dst.spec.norm_mean) / (2 * dst.spec.norm_std)


def synthesize_waveforms(generator: MelGenerator, cls: int, n: int, vocoder: DiffWaveVocoder | None = None,
                         source: MelSet | None = None, seed: int = 0) -> np.ndarray:
    """``n`` waveforms (n, samples) of class ``cls``: generator mels through ``vocoder``, or vocoder re-synthesis."""
    if isinstance(generator, DiffWaveVocoder):
        return generator.sample(cls, n, seed=seed, source=source).numpy()
    if vocoder is None:
        raise DataError(f"{generator.kind} makes mels; a DiffWave vocoder is needed to write audio (--vocoder)")
    if (generator.config.n_frames, generator.config.n_mels) != (vocoder.config.n_frames, vocoder.config.n_mels):
        raise DataError(f"generator mels {generator.config.n_frames}x{generator.config.n_mels} do not fit the vocoder's "
                        f"{vocoder.config.n_frames}x{vocoder.config.n_mels}")
    mels = _renormalise(generator.sample(cls, n, seed=seed), generator, vocoder)
    return vocoder.vocode(mels, seed=seed).numpy()


def write_icbhi_dir(out_dir: str | os.PathLike, waveforms: dict[int, np.ndarray], sample_rate: int,
                    meta: dict[str, Any] | None = None, overwrite: bool = False, device: str = "Synth",
                    inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Write {class index: (n, samples) audio} as an ICBHI-layout directory; returns its path.

    File stems are ``<9000 + class>_<k>_Tc_sc_<device>``; ``device`` (letters and digits) tells
    sets from different generators apart. An existing ``out_dir`` is replaced only with
    ``overwrite``, and never when it is or holds one of ``inputs`` (runtime/outputs.py).
    """
    if not re.fullmatch(r"[0-9A-Za-z]+", device):
        raise DataError(f"device name {device!r} must be letters and digits only")
    out = Path(out_dir)
    if os.path.lexists(out) and not overwrite:
        raise DataError(f"{out}: already exists (pass overwrite=True / --force to replace it)")
    if not any(len(w) for w in waveforms.values()):
        raise DataError("no synthetic samples to write")
    out.parent.mkdir(parents=True, exist_ok=True)  # an experiment's own tree; the CLI refuses a missing parent first
    out = check_output_dir(out, inputs=inputs, replace=True)  # never holding an input
    tmp: Path | None = None
    try:
        with signals_held():  # no leaked temporary if a signal lands between creating and owning it
            tmp = temp_dir_beside(out)
        audio_dir = tmp / "audio_and_txt_files"
        audio_dir.mkdir()
        split_lines, counts = [], {}
        for cls, batch in sorted(waveforms.items()):
            crackles, wheezes = cls & 1, cls >> 1
            for k, wave in enumerate(np.asarray(batch, dtype=np.float32)):
                if not np.isfinite(wave).all():
                    raise DataError(f"generated {CLASSES[cls]} sample {k} is not finite")
                stem = f"{SYNTHETIC_PATIENT_BASE + cls}_{k + 1}_Tc_sc_{device}"
                sf.write(audio_dir / f"{stem}.wav", np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")
                (audio_dir / f"{stem}.txt").write_text(f"0.000\t{len(wave) / sample_rate:.3f}\t{crackles}\t{wheezes}\n")
                split_lines.append(f"{stem}\ttrain")
            counts[CLASSES[cls]] = len(batch)
        (tmp / SPLIT_FILENAME).write_text("\n".join(split_lines) + "\n")
        (tmp / "synthetic.json").write_text(json.dumps({"synthetic": True, "class_counts": counts, **(meta or {})},
                                                       indent=2) + "\n")
        install_dir(tmp, out, replace=overwrite)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp)
    return out


def write_mixed_dataset(out_dir: str | os.PathLike, generator: MelGenerator, plan: dict[int, int],
                        vocoder: DiffWaveVocoder | None = None, source: MelSet | None = None, seed: int = 0,
                        overwrite: bool = False, inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Generate ``plan`` ({class: count}) samples and write them as a Mixed-N synthetic directory
    (``overwrite`` and ``inputs`` as in ``write_icbhi_dir``)."""
    waveforms = {c: synthesize_waveforms(generator, c, k, vocoder, source, seed=seed + 1000 * c)
                 for c, k in sorted(plan.items())}
    meta = {"generator": generator.kind, "generator_step": generator.step, "seed": seed,
            "vocoder": None if vocoder is None else {"kind": vocoder.kind, "step": vocoder.step},
            "feature_spec": generator.spec.to_dict(), "n_frames": generator.config.n_frames}
    device = "Synth" + re.sub(r"[^0-9A-Za-z]", "", generator.kind.title())
    return write_icbhi_dir(out_dir, waveforms, generator.spec.sample_rate, meta, overwrite, device=device,
                           inputs=inputs)
