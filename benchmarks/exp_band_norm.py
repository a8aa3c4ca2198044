"""Experiment: does per-window spectral equalisation (band-mean normalisation) make sources transfer?

A stethoscope's frequency response is a fixed filter: in the log-mel domain it adds one offset per
band. Subtracting each band's mean over the 8 s window removes it (cepstral mean normalisation);
adding back one reference profile (the mean band profile of the training windows) keeps the input
in the range the AudioSet network was trained on. Variants, on the cached efficientat-mel table:

* ``plain``: the shipped front end;
* ``band-mean``: x - mean_t(x) + reference profile;
* ``band-mean-var``: the same, each band also scaled to the reference's mean within-window spread.

The frozen AudioSet mn04 embeds the windows; a class/source-balanced logistic probe (L2 on
validation) is trained on one source and scored on the OTHER source's training-patient windows
(train + val roles: never seen by that probe, and not held-out evaluation patients), and on both
sources' validation windows when trained on both. Only validation/training roles are scored: the
result may choose the front end.

Usage: python benchmarks/exp_band_norm.py --recipe train/recipes/real-edge.toml --cache-dir /work/cache
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from stethoedge.cli_train import load_config_file
from stethoedge.runtime.feature_spec import efficientat_spec
from stethoedge.train.edge_learner import EdgeRecipe, fit_probe, sample_weights
from stethoedge.train.efficientat import MNConfig, load_efficientat
from stethoedge.train.evaluation import point_metrics
from stethoedge.train.sources import SourceConfig, build_table


def equalise(x: np.ndarray, ref_mean: np.ndarray, ref_std: np.ndarray | None) -> np.ndarray:
    """(n, frames, mels): each band's window mean replaced by ``ref_mean`` (and its spread by ``ref_std``)."""
    mu = x.mean(axis=1, keepdims=True)
    y = x - mu
    if ref_std is not None:
        y = y / (x.std(axis=1, keepdims=True) + 1e-3) * ref_std
    return y + ref_mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="train/recipes/real-edge.toml")
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--spr-train", type=int, default=1200, help="SPRSound training windows drawn")
    ap.add_argument("--out", default="runs/band_norm.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    r = EdgeRecipe.from_dict({**load_config_file(args.recipe), "cache_dir": args.cache_dir, "out": "unused"})
    src = SourceConfig(sprsound=r.sprsound, icbhi=r.icbhi, icbhi_test=r.icbhi_test, val_fraction=r.val_fraction,
                       icbhi_eval_fraction=r.icbhi_eval_fraction, seed=r.split_seed)
    t = build_table(src, efficientat_spec(lowpass_hz=r.lowpass_hz), r.cache_dir)
    rng = np.random.default_rng(0)
    spr_tr = rng.choice(t.where("train", "sprsound"), args.spr_train, replace=False)
    keep = np.sort(np.concatenate([spr_tr, t.where("val", "sprsound"), t.where("train", "icbhi"),
                                   t.where("val", "icbhi")]))
    lab, rol, src_ = t.label[keep], t.role[keep], t.source[keep]
    feats = np.asarray(t.features[keep], dtype=np.float32)
    train_rows = feats[rol == "train"]
    ref_mean = train_rows.mean(axis=(0, 1), keepdims=True)[0]
    ref_std = train_rows.std(axis=1).mean(axis=0)[None]
    model, _ = load_efficientat(r.weights, MNConfig(n_classes=527))
    results: dict[str, dict] = {}
    for variant in ("plain", "band-mean", "band-mean-var"):
        t0 = time.time()
        x = feats if variant == "plain" else equalise(feats, ref_mean, ref_std if variant == "band-mean-var" else None)
        with torch.no_grad():
            emb = np.concatenate([model.embed(torch.from_numpy(x[s:s + 32].astype(np.float32))).numpy()
                                  for s in range(0, len(x), 32)])
        cell = {}
        for trained_on, scored_on in (("sprsound", "icbhi"), ("icbhi", "sprsound"), ("both", "both")):
            pick = (src_ == trained_on) | (trained_on == "both")
            tr, va = (rol == "train") & pick, (rol == "val") & pick
            probe, _ = fit_probe(emb[tr], lab[tr], sample_weights(lab[tr], src_[tr]), emb[va], lab[va], src_[va])
            with torch.no_grad():
                pred = probe(torch.from_numpy(emb)).numpy().argmax(1)
            targets = ("icbhi", "sprsound") if scored_on == "both" else (scored_on,)
            for s in targets:
                m = (src_ == s) & ((rol == "val") if scored_on == "both" else np.ones_like(pick))
                pm = point_metrics(lab[m], pred[m])
                cell[f"{trained_on} -> {s} ({'val' if scored_on == 'both' else 'train+val'})"] = {
                    "icbhi_score": pm["icbhi_score"], "binary_score": pm["binary_score"], "n": int(m.sum())}
        results[variant] = cell
        print(f"{variant} ({time.time() - t0:.0f} s): " + "; ".join(
            f"{k}: Score {v['icbhi_score']:.3f} bin {v['binary_score']:.3f}" for k, v in cell.items()), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"windows": int(len(keep)), "results": results}, indent=2))


if __name__ == "__main__":
    main()
