"""Experiment: how 16 kHz audio should enter the 32 kHz-trained mn04, and whether band-limiting helps transfer.

For each front-end variant, the frozen AudioSet mn04 embeds the same windows and a class/source-
balanced logistic probe (L2 chosen on validation patients) is trained on (a) SPRSound only,
(b) ICBHI only, (c) both; it is scored (4-class ICBHI Score, SPRSound binary challenge Score) on
the held-out roles of each source. Cross-source cells (trained on one source, scored on the other)
measure transfer. Variants:

* ``adapted``: the efficientat-mel FeatureSpec (32 kHz mel layout on 16 kHz bins; what ships);
* ``adapted-lp4k`` / ``adapted-lp2k``: the same, band-limited to 4 / 2 kHz (lowpass_hz);
* ``upsampled``: soxr 16 -> 32 kHz, then EfficientAT's own front end at 32 kHz;
* ``naive``: 16 kHz samples fed to the 32 kHz front end as if they were 32 kHz.

Usage: python benchmarks/exp_frontend_transfer.py --weights ../shared/weights/efficientat_mn04_as.pt \
           --shared ../shared --train-per-source 1500 --out runs/frontend_transfer.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soxr
import torch

from stethoedge.runtime.feature_spec import FeatureSpec, efficientat_spec
from stethoedge.runtime.features import compute_features, mel_filterbank
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.train.edge_learner import fit_probe, sample_weights
from stethoedge.train.efficientat import MNConfig, load_efficientat
from stethoedge.train.evaluation import point_metrics
from stethoedge.train.sources import SourceConfig, iter_segments

REF_SPEC = FeatureSpec(sample_rate=32000, n_mels=128, low_freq_hz=0.0, high_freq_hz=15000.0)


def reference_mel_32k(audio_32k: np.ndarray) -> np.ndarray:
    """EfficientAT's front end on 32 kHz audio: pre-emphasis, centred STFT 1024/800/320, Kaldi mel, log(x+1e-5), (x+4.5)/5."""
    x = torch.from_numpy(audio_32k.astype(np.float32))
    x = x[1:] - 0.97 * x[:-1]
    spec = torch.stft(x, 1024, hop_length=320, win_length=800, window=torch.hann_window(800, periodic=False),
                      center=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    mel = torch.from_numpy(mel_filterbank(REF_SPEC).copy()) @ power
    return ((torch.log(mel + 1e-5) + 4.5) / 5.0).T.numpy()  # (frames, mels)


def features(variant: str, window_16k: np.ndarray) -> np.ndarray:
    """Model input (frames, mels) of one 8 s, 16 kHz window for a front-end variant."""
    if variant.startswith("adapted"):
        lp = {"adapted": 0.0, "adapted-lp4k": 4000.0, "adapted-lp2k": 2000.0}[variant]
        return compute_features(window_16k, efficientat_spec(lowpass_hz=lp))
    if variant == "upsampled":
        return reference_mel_32k(soxr.resample(window_16k, 16000, 32000, quality="HQ"))
    if variant == "naive":
        return reference_mel_32k(window_16k)
    raise ValueError(variant)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--train-per-source", type=int, default=1500, help="training windows drawn per source")
    ap.add_argument("--variants", default="adapted,adapted-lp4k,adapted-lp2k,upsampled,naive")
    ap.add_argument("--out", default="runs/frontend_transfer.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    shared = Path(args.shared)
    cfg = SourceConfig(sprsound=str(shared / "data/sprsound"), icbhi=str(shared / "data/icbhi_train16k"),
                       icbhi_test=str(shared / "data/icbhi_sample"))
    rows = list(iter_segments(cfg))
    label = np.array([r[1] for r in rows])
    role, source = (np.array([r[i] for r in rows]) for i in (2, 3))
    rng = np.random.default_rng(0)
    keep = []
    for s in ("sprsound", "icbhi"):
        tr = np.flatnonzero((role == "train") & (source == s))
        keep.append(rng.choice(tr, min(len(tr), args.train_per_source), replace=False))
        keep.append(np.flatnonzero((role != "train") & (source == s)))
    keep = np.sort(np.concatenate(keep))
    model, _ = load_efficientat(args.weights, MNConfig(n_classes=527))
    results: dict[str, dict] = {}
    for variant in args.variants.split(","):
        t0 = time.time()
        with torch.no_grad():
            emb = np.concatenate([
                model.embed(torch.from_numpy(np.stack([features(variant, cyclic_pad(rows[i][0], 128000))
                                                       for i in keep[s:s + 32]]))).numpy()
                for s in range(0, len(keep), 32)])
        lab, rol, src = label[keep], role[keep], source[keep]
        cell = {}
        for trained_on in ("sprsound", "icbhi", "both"):
            tr = (rol == "train") & ((src == trained_on) | (trained_on == "both"))
            va = (rol == "val") & ((src == trained_on) | (trained_on == "both"))
            probe, info = fit_probe(emb[tr], lab[tr], sample_weights(lab[tr], src[tr]), emb[va], lab[va], src[va])
            with torch.no_grad():
                pred = probe(torch.from_numpy(emb)).numpy().argmax(1)
            for test_role, test_src in (("eval", "icbhi"), ("test-icbhi", "icbhi"), ("test-inter", "sprsound"),
                                        ("test-intra", "sprsound")):
                m = (rol == test_role) & (src == test_src)
                pm = point_metrics(lab[m], pred[m])
                cell[f"{trained_on} -> {test_role}"] = {"icbhi_score": pm["icbhi_score"],
                                                         "binary_score": pm["binary_score"], "n": int(m.sum())}
        results[variant] = cell
        print(f"{variant} ({time.time() - t0:.0f} s): " + "; ".join(
            f"{k} Score {v['icbhi_score']:.3f} bin {v['binary_score']:.3f}" for k, v in cell.items()), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"windows": int(len(keep)), "results": results}, indent=2))


if __name__ == "__main__":
    main()
