"""Baseline: the project's AST trained from scratch on the same real windows and splits as the shipped model.

The issue's baseline table asks for "the tiny AST from scratch". The ``tiny`` preset (5.5 M
parameters, 2.85 GFLOPs per window) costs about 9 TFLOPs per epoch of 5,784 training windows with
the backward pass: hours on this 2-core CPU. So this runs the ``nano`` preset (dim 96, depth 4,
16x16 patches, ~0.5 M parameters) for a CPU budget comparable to the mn04 random-initialisation
baseline, and says so in its output. Everything else is the shipped recipe's: the same example
table (train/sources.py, ``split_seed``), the Kaldi fbank FeatureSpec the AST side uses (its
normalisation fitted on training windows only), the source- and class-balanced sampler, the same
feature augmentation (band limit, gain, masks, roll), AdamW with warm-up + cosine, label
smoothing, epoch selection on validation patients only (mean over sources of the 4-class Score),
and train/edge_learner.evaluate_table on every role with patient bootstrap intervals.

Usage (writes OUT.metrics.json; resumes from OUT.state.pt)::

    python benchmarks/exp_ast_baseline.py --recipe train/recipes/real-edge.toml --cache-dir /work/cache \
        --out models/reports/baseline-ast-nano --epochs 8
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.outputs import atomic_write_text
from stethoedge.train.edge_learner import EdgeRecipe, FeatureAugment, evaluate_table, sample_weights, selection_score
from stethoedge.train.model import AST, preset_config
from stethoedge.train.sources import SourceConfig, build_table, summary


def _logits(model: nn.Module, feats: np.ndarray, idx: np.ndarray, mean: float, std: float, batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(idx), batch):
            x = torch.from_numpy(np.asarray(feats[idx[s:s + batch]], dtype=np.float32))
            out.append(model((x - mean) / std).numpy())
    return np.concatenate(out) if out else np.zeros((0, 4), np.float32)


def main() -> int:
    """Train, select on validation, evaluate every role; print one summary line per held-out set."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="train/recipes/real-edge.toml")
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--out", default="models/reports/baseline-ast-nano")
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--samples-per-epoch", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-per-source", type=int, default=None, help="cap windows per (source, role): a quick check")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from stethoedge.cli_train import load_config_file

    values = load_config_file(args.recipe)
    values["out"] = args.out
    if args.max_per_source is not None:
        values["max_per_source"] = args.max_per_source
    r = EdgeRecipe.from_dict(values)
    src = SourceConfig(sprsound=r.sprsound, icbhi=r.icbhi, icbhi_test=r.icbhi_test, val_fraction=r.val_fraction,
                       icbhi_eval_fraction=r.icbhi_eval_fraction, seed=r.split_seed, max_per_source=r.max_per_source)
    spec = FeatureSpec()  # the AST side's Kaldi fbank (128 mels, 25/10 ms, 8 s)
    t0 = time.time()
    table = build_table(src, spec, args.cache_dir)
    print(f"table {len(table)} windows ({time.time() - t0:.0f} s): {json.dumps(summary(table))}", flush=True)
    feats = table.features
    train_idx, val_idx = table.where("train"), table.where("val")
    sample = np.asarray(feats[train_idx[:: max(1, len(train_idx) // 400)]], dtype=np.float32)
    mean, std = float(sample.mean()), float(2 * sample.std())  # AST normalisation from training windows only
    cfg = preset_config(args.preset, n_frames=spec.num_frames, n_mels=spec.n_mels, n_classes=4)
    model = AST(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    augment = FeatureAugment(spec, r, args.seed)  # floor and dB step in the stored units; re-expressed in ours
    augment.floor, augment.gain_unit = (augment.floor - mean) / std, augment.gain_unit / std
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(args.samples_per_epoch / args.batch_size)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / steps_per_epoch) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    weights = torch.from_numpy(sample_weights(table.label[train_idx], table.source[train_idx]))
    gen = torch.Generator().manual_seed(args.seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
    out = Path(args.out)
    state_path = Path(args.cache_dir) / f"{out.name}.state.pt"  # resumable state stays out of the repository
    history, best, start = [], {"score": -1.0}, 0
    if state_path.is_file():
        st = torch.load(state_path, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        history, best, start = st["history"], st["best"], st["epoch"] + 1
        print(f"resumed after epoch {start}", flush=True)
    started = time.time()
    for epoch in range(start, args.epochs):
        model.train()
        te = time.time()
        draws = torch.multinomial(weights, steps_per_epoch * args.batch_size, replacement=True, generator=gen).numpy()
        losses = []
        for b in range(steps_per_epoch):
            idx = train_idx[np.sort(draws[b * args.batch_size:(b + 1) * args.batch_size])]
            x = (torch.from_numpy(np.asarray(feats[idx], dtype=np.float32)) - mean) / std
            y = torch.from_numpy(table.label[idx])
            loss = loss_fn(model(augment(x)), y)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        val_logits = _logits(model, feats, val_idx, mean, std)
        score, per = selection_score(val_logits, table.label[val_idx], table.source[val_idx])
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_score": score, "val_per_source": per,
                        "seconds": time.time() - te})
        print(f"epoch {epoch + 1}/{args.epochs} loss {np.mean(losses):.3f} val {score:.3f} {per} "
              f"({time.time() - te:.0f} s)", flush=True)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch, "state": {k: v.clone() for k, v in model.state_dict().items()}}
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "gen": gen.get_state(), "history": history, "best": best, "epoch": epoch}, state_path)
    model.load_state_dict(best["state"])
    name = f"AST {args.preset} from scratch"
    preds = _logits(model, feats, np.arange(len(table)), mean, std).argmax(1)
    evaluation = evaluate_table(table, {name: preds})
    report = {"model": name, "preset": args.preset, "parameters": n_params, "feature_spec": spec.to_dict(),
              "normalisation": {"mean": mean, "std": std}, "best_epoch": best["epoch"],
              "val_selection_score": best["score"], "history": history, "evaluation": evaluation,
              "train_seconds_this_process": time.time() - started, "args": vars(args),
              "note": "tiny preset (5.5 M, 2.85 GFLOPs/window) not trainable in this CPU budget; nano preset"}
    atomic_write_text(out.with_suffix(".metrics.json"), json.dumps(report, indent=1, default=str) + "\n")
    for key in ("test-inter/sprsound", "test-intra/sprsound", "eval/icbhi", "test-icbhi/icbhi"):
        m = evaluation.get(key, {}).get(name, {}).get("metrics")
        if m:
            print(f"{key:<22} ICBHI Score {m['icbhi_score']:.3f}  binary Score {m['binary_score']:.3f}  "
                  f"4-class challenge Score {m['multi_score']:.3f}  macro-F1 {m['macro_f1']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
