"""Training-side subcommands: simulate, train."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stethoedge.cli_common import AddCommand
from stethoedge.cli_common import positive_float as _positive_float
from stethoedge.cli_common import positive_int as _positive_int


def cmd_simulate(args: argparse.Namespace) -> int:
    from stethoedge.train.simulator import simulate_dataset

    t0 = time.perf_counter()
    summary = simulate_dataset(Path(args.out), n_patients=args.patients, recordings_per_patient=args.recordings,
                               duration_s=args.duration, seed=args.seed)
    print(json.dumps(summary.get("class_counts", summary), indent=None))
    print(f"simulated {args.patients} patients x {args.recordings} recordings into {args.out} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from stethoedge.train.trainer import TrainConfig, train

    cfg = TrainConfig(data=args.data, out=args.out, preset=args.preset, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, optimizer=args.optimizer, rho=args.rho, weighted_sampler=not args.no_weighted_sampler,
                      val_fraction=args.val_fraction, seed=args.seed, threads=args.threads)
    metrics = train(cfg)
    for split in ("val", "test"):
        m = metrics.get(split)
        if m:
            print(f"{split:>4}: Sp {m['specificity']:.3f}  Se {m['sensitivity']:.3f}  Score {m['score']:.3f}  "
                  f"macro-F1 {m['macro_f1']:.3f}  (n={m['n']})")
    print(f"best epoch {metrics['best_epoch']} (selected on validation); run written to {args.out}")
    return 0


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser."""
    p = add("simulate", cmd_simulate, "Write a synthetic respiratory-sound dataset in the ICBHI 2017 layout.")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--patients", type=_positive_int, default=16, help="number of simulated patients (default 16)")
    p.add_argument("--recordings", type=_positive_int, default=3, help="recordings per patient (default 3)")
    p.add_argument("--duration", type=_positive_float, default=20.0, help="seconds per recording (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")

    p = add("train", cmd_train, "Train the AST classifier on an ICBHI-layout directory; writes a run directory.")
    p.add_argument("--data", required=True, help="dataset root (ICBHI layout: <stem>.wav + <stem>.txt, split file)")
    p.add_argument("--out", required=True, help="run directory to write (checkpoint, metrics, config)")
    p.add_argument("--preset", default="tiny", choices=["micro", "tiny", "small", "base"],
                   help="model size (tiny: trains on a 2-core CPU in minutes)")
    p.add_argument("--epochs", type=_positive_int, default=8)
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="peak learning rate (cosine schedule, warm-up)")
    p.add_argument("--optimizer", choices=["sam", "adamw"], default="sam", help="SAM around AdamW, or plain AdamW")
    p.add_argument("--rho", type=_positive_float, default=0.05, help="SAM neighbourhood radius")
    p.add_argument("--no-weighted-sampler", action="store_true", help="shuffle instead of inverse-frequency sampling")
    p.add_argument("--val-fraction", type=_positive_float, default=0.25,
                   help="fraction of TRAIN patients held out for model selection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
