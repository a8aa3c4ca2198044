"""ICBHI patient-level cross-validation of the shipped recipe and its baselines.

The shipped model's ICBHI number comes from 5 held-out patients, one of whom has 72 % of the
cycles: too few to rank models on adult recordings. This runs the real-edge recipe K times
(default 5) with the 21 ICBHI official-train patients split into K folds: in fold k, fold k's
patients are the held-out ICBHI set, validation patients are carved from the others exactly as the
recipe does (seeded, same fraction), and the rest train. SPRSound roles are the recipe's and do
not change. Every patient is held out exactly once, so the pooled held-out predictions cover all
21 patients and 426 cycles, scored with patient-bootstrap intervals.

Per fold, everything is selected on that fold's validation patients only (the epoch, the probe's
L2, and whether the fine-tuned tail or the frozen probe is "the recipe's output"); the held-out
fold never selects anything. Baselines on the same folds: always-normal, the logistic probes on
the frozen mn04 and YAMNet embeddings.

It reuses the recipe's caches (the front-end table and the frozen trunk outputs, with the
shipped run's augmented views of the SPRSound training windows) and adds augmented trunk views
of the ICBHI windows. Usage (writes OUT/cv.json and OUT/fold<k>.npz; finished folds are kept)::

    python benchmarks/exp_icbhi_cv.py --recipe train/recipes/real-edge.toml --cache-dir /work/cache \
        --out /work/runs/icbhi-cv [--set l2sp=0.05 ...]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch

from stethoedge.cli_train import load_config_file
from stethoedge.data.evaluation import report
from stethoedge.runtime.outputs import atomic_write_text
from stethoedge.train.edge_learner import (EdgeData, EdgeLearner, EdgeRecipe, FeatureAugment, build_tail,
                                           fit_probe, predict_tail, prepare_data, probe_baseline, sample_weights,
                                           trunk_outputs)
from stethoedge.train.sources import hold_out_patients

BASELINES = ("always-normal", "YAMNet frozen + logistic probe", "mn04 frozen + logistic probe")


def parse_value(text: str) -> object:
    """A --set value: JSON when it parses (numbers, lists, true/false), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def recipe_from(args: argparse.Namespace) -> EdgeRecipe:
    """The recipe file with --cache-dir, --out and every --set key=value applied."""
    values = dict(load_config_file(args.recipe))
    values.update(cache_dir=args.cache_dir, out=args.out)
    known = {f.name for f in fields(EdgeRecipe)}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in known:
            raise SystemExit(f"--set {item}: {key!r} is not a recipe key")
        values[key] = parse_value(value)
    return EdgeRecipe.from_dict(values)


def icbhi_folds(patients: list[str], k: int, seed: int) -> list[list[str]]:
    """The distinct ICBHI patients in ``k`` seeded folds of near-equal size."""
    unique = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(unique))
    return [[unique[i] for i in part] for part in np.array_split(order, k)]


def fold_roles(data: EdgeData, fold: list[str], r: EdgeRecipe, seed: int) -> np.ndarray:
    """The table's roles with ICBHI official-train patients re-assigned: fold -> eval, a validation carve, train."""
    t = data.table
    role = t.role.copy()
    mine = (t.source == "icbhi") & np.isin(t.role, ("train", "val", "eval"))
    rest = sorted(set(t.patient[mine].tolist()) - set(fold))
    val = hold_out_patients(rest, r.val_fraction / max(1e-9, 1 - r.icbhi_eval_fraction), seed)
    role[mine] = np.where(np.isin(t.patient[mine], fold), "eval",
                          np.where(np.isin(t.patient[mine], sorted(val)), "val", "train"))
    return role


def icbhi_views(data: EdgeData, r: EdgeRecipe, cache: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """(indices of every ICBHI official-train window, their ``r.views`` augmented trunk outputs, cached)."""
    t = data.table
    idx = np.flatnonzero((t.source == "icbhi") & np.isin(t.role, ("train", "val", "eval")))
    trunk = data.pretrained.features[:r.tune_from].eval()
    views = [np.asarray(trunk_outputs(trunk, t.features, idx, cache / f"cv-icbhi-trunk{r.tune_from}-view{v}-s{r.seed}.npy",
                                      FeatureAugment(data.spec, r, seed=1000 + v + 7919 * r.seed),
                                      desc=f"ICBHI trunk (view {v + 1})")) for v in range(r.views)]
    return idx, views


def fold_data(data: EdgeData, role: np.ndarray, icbhi_idx: np.ndarray, icbhi_v: list[np.ndarray]) -> EdgeData:
    """EdgeData for one fold: its roles, its training views (SPRSound from the recipe's caches, ICBHI from ours)."""
    table = replace(data.table, role=role)
    train_idx, val_idx = table.where("train"), table.where("val")
    pos_orig = {int(i): p for p, i in enumerate(data.train_idx)}  # recipe's view caches are indexed by its train_idx
    pos_icbhi = {int(i): p for p, i in enumerate(icbhi_idx)}
    views = [np.asarray(data.h_clean[train_idx])]
    for v in range(len(icbhi_v)):
        rows = []
        for i in train_idx:
            i = int(i)
            rows.append(icbhi_v[v][pos_icbhi[i]] if i in pos_icbhi else data.views[v + 1][pos_orig[i]])
        views.append(np.stack(rows))
    return replace(data, table=table, train_idx=train_idx, val_idx=val_idx, views=views,
                   h_val=np.asarray(data.h_clean[val_idx]))


def yamnet_logits(emb: np.ndarray, data: EdgeData) -> tuple[np.ndarray, dict]:
    """Logistic probe on frozen YAMNet embeddings fit on the fold's train windows, L2 on its validation."""
    t = data.table
    tr, va = data.train_idx, data.val_idx
    probe, info = fit_probe(emb[tr], t.label[tr], sample_weights(t.label[tr], t.source[tr]), emb[va], t.label[va],
                            t.source[va])
    with torch.no_grad():
        return probe(torch.from_numpy(emb.astype(np.float32))).numpy(), info


def run_fold(k: int, data: EdgeData, r: EdgeRecipe, out: Path, yamnet: np.ndarray | None) -> dict:
    """Train and select on one fold; its held-out ICBHI predictions and SPRSound test-inter predictions."""
    torch.manual_seed(r.seed)
    fold_dir = out / f"fold{k}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    learner = EdgeLearner(r, data, build_tail(r, data), fold_dir / "state.pt")
    learner.fit()
    tail_logits = predict_tail(learner.tail, data.h_clean)
    _, probe_info, probe_logits = probe_baseline(r, data)
    tail_val = learner.best["val_selection_score"]
    recipe_logits = tail_logits if tail_val >= probe_info["val_selection_score"] else probe_logits
    preds = {"always-normal": np.zeros(len(data.table), np.int64),
             "mn04 frozen + logistic probe": probe_logits.argmax(1),
             "mn04 fine-tuned tail": tail_logits.argmax(1),
             "recipe output (tail or probe, chosen on validation)": recipe_logits.argmax(1)}
    info = {"fold": k, "best_epoch": learner.best["epoch"], "val_tail": tail_val,
            "val_tail_per_source": learner.best["val_per_source"], "val_probe": probe_info["val_selection_score"],
            "val_probe_per_source": probe_info["val_per_source"], "history": learner.history}
    if yamnet is not None:
        y_logits, y_info = yamnet_logits(yamnet, data)
        preds["YAMNet frozen + logistic probe"] = y_logits.argmax(1)
        info["val_yamnet"] = y_info["val_selection_score"]
    t = data.table
    keep = np.flatnonzero((t.role == "eval") | (t.role == "test-inter"))
    np.savez(out / f"fold{k}.npz", idx=keep, role=t.role[keep], **{name: p[keep] for name, p in preds.items()},
             tail_logits=tail_logits[keep], probe_logits=probe_logits[keep])
    atomic_write_text(out / f"fold{k}.json", json.dumps(info, indent=2, default=float) + "\n")
    return info


def pooled(out: Path, k: int, data: EdgeData) -> dict:
    """Every fold's held-out ICBHI windows pooled (each patient once) and SPRSound test-inter per fold, scored."""
    t = data.table
    folds = [dict(np.load(out / f"fold{i}.npz")) for i in range(k)]
    names = [n for n in folds[0] if n not in ("idx", "role", "tail_logits", "probe_logits")]
    result: dict = {"icbhi_pooled": {}, "icbhi_per_fold": [], "sprsound_inter_per_fold": []}
    idx = np.concatenate([f["idx"][f["role"] == "eval"] for f in folds])
    for name in names:
        pred = np.concatenate([f[name][f["role"] == "eval"] for f in folds])
        result["icbhi_pooled"][name] = report(t.label[idx], pred, t.patient[idx])
        for dev in sorted(set(t.device[idx].tolist())):
            m = t.device[idx] == dev
            result.setdefault("icbhi_pooled_by_device", {}).setdefault(dev, {})[name] = report(
                t.label[idx][m], pred[m], t.patient[idx][m], n_boot=200)
    for f in folds:
        for role, key in (("eval", "icbhi_per_fold"), ("test-inter", "sprsound_inter_per_fold")):
            sel = f["role"] == role
            ii = f["idx"][sel]
            result[key].append({name: report(t.label[ii], f[name][sel], t.patient[ii], n_boot=200)["metrics"]
                                for name in names})
    return result


def main() -> int:
    """Run (or finish) every fold, then score the pooled held-out predictions; print a summary table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="train/recipes/real-edge.toml")
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--out", default="runs/icbhi-cv")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="override a recipe key, e.g. l2sp=0.05")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    r = recipe_from(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data = prepare_data(r)
    icbhi_idx, icbhi_v = icbhi_views(data, r, Path(data.table.info["cache"]))
    yam_path = Path(data.table.info["cache"]) / "yamnet-embeddings.npy"
    yamnet = np.load(yam_path) if r.yamnet and yam_path.is_file() else None
    t = data.table
    mine = (t.source == "icbhi") & np.isin(t.role, ("train", "val", "eval"))
    folds = icbhi_folds(t.patient[mine].tolist(), args.folds, args.fold_seed)
    infos = []
    for k, fold in enumerate(folds):
        if (out / f"fold{k}.json").is_file():
            infos.append(json.loads((out / f"fold{k}.json").read_text()))
            continue
        print(f"fold {k + 1}/{len(folds)}: held-out ICBHI patients {fold}", flush=True)
        fd = fold_data(data, fold_roles(data, fold, r, seed=args.fold_seed * 100 + k), icbhi_idx, icbhi_v)
        infos.append(run_fold(k, fd, r, out, yamnet))
    result = {"recipe": asdict(r), "folds": folds, "fold_info": infos, **pooled(out, len(folds), data),
              "seconds": time.time() - started}
    atomic_write_text(out / "cv.json", json.dumps(result, indent=2, default=float) + "\n")
    print(f"ICBHI, {len(folds)}-fold patient cross-validation, pooled held-out cycles "
          f"({result['icbhi_pooled']['always-normal']['n_windows']} cycles, "
          f"{result['icbhi_pooled']['always-normal']['n_patients']} patients):")
    for name, rep in result["icbhi_pooled"].items():
        m, ci = rep["metrics"], rep["ci95"]
        print(f"  {name:55s} ICBHI Score {m['icbhi_score']:.3f} [{ci['icbhi_score'][0]:.2f}, {ci['icbhi_score'][1]:.2f}]"
              f" Sp {m['icbhi_sp']:.3f} Se {m['icbhi_se']:.3f} binary {m['binary_score']:.3f} F1 {m['macro_f1']:.3f}")
    print("validation (per fold): tail " + " ".join(f"{i['val_tail']:.3f}" for i in infos) +
          " | probe " + " ".join(f"{i['val_probe']:.3f}" for i in infos))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
