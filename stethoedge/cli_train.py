"""Training-side subcommands: simulate, train."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from stethoedge.cli_common import AddCommand
from stethoedge.cli_common import MAX_SEED, MAX_THREADS, bounded_float, bounded_int, bounded_int_list


def cmd_simulate(args: argparse.Namespace) -> int:
    from stethoedge.train.simulator import simulate_dataset

    t0 = time.perf_counter()
    summary = simulate_dataset(Path(args.out), n_patients=args.patients, recordings_per_patient=args.recordings,
                               duration_s=args.duration, seed=args.seed, overwrite=args.overwrite)
    print(json.dumps(summary.get("class_counts", summary), indent=None))
    print(f"simulated {args.patients} patients x {args.recordings} recordings into {args.out} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def label_list(text: str) -> list[str]:
    """``--labels normal,abnormal``: two or more distinct, comma-separated class names."""
    names = [n.strip() for n in text.split(",")]
    if len(names) < 2 or len(set(names)) != len(names) or not all(names):
        raise argparse.ArgumentTypeError(f"expected 2+ distinct comma-separated class names, got {text!r}")
    return names


#: The options of `stethoedge train`, one row per RunConfig field: (flag, dest, argparse keywords). The dest is
#: the field's flat key (``stethoedge.train.run_config.FLAT`` maps it to the nested field, e.g. lr -> optim.lr);
#: the parser is built from this table and ``build_run_config`` applies the given ones over --config. Every
#: numeric option is range-checked; the default a help states is the RunConfig default (tests/test_cli_help.py).
#: Options not given stay None (store_const for the switches), so --config values survive.
TRAIN_FLAGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--data", "data", dict(help="dataset root: ICBHI layout (<stem>.wav + <stem>.txt, split file) or class folders "
                              "<root>/<label>/*.wav for --labels; required here or in --config (default: none)")),
    ("--labels", "labels", dict(type=label_list, metavar="A,B,...",
                                help="the model's label set, class folders named after it (e.g. normal,abnormal); "
                                "stored with the model (default: the ICBHI classes normal, crackle, wheeze, both)")),
    ("--out", "out", dict(help="run directory to write (checkpoint, metrics, config, plots); "
                              "required here or in --config (default: none)")),
    ("--preset", "preset", dict(choices=["micro", "nano", "tiny", "small", "base"],
                                help="model size: nano ~0.5 M (CPU demo), tiny ~5.5 M, small ~22 M, base ~87 M "
                                "(default nano)")),
    ("--depth", "depth", dict(type=bounded_int(1, 48), help="transformer layers (default the preset's)")),
    ("--fstride", "fstride", dict(type=bounded_int(1, 16), help="patch stride in frequency, 10 overlapping as AST, "
                                  "16 not (default the preset's: 16; base 10)")),
    ("--tstride", "tstride", dict(type=bounded_int(1, 16),
                                  help="patch stride in time, as --fstride (default the preset's: 16; base 10)")),
    ("--init", "init", dict(help="pretrained weights: a Hugging Face AST directory or an original AST .pth "
                                 "(default: none, random initialisation)")),
    ("--epochs", "epochs", dict(type=bounded_int(1, 10_000), help="passes over the training set (default 8)")),
    ("--batch-size", "batch_size", dict(type=bounded_int(1, 65_536), help="windows per step (default 16)")),
    ("--lr", "lr", dict(type=bounded_float(1e-7, 1.0),
                        help="peak learning rate of the cosine schedule after warm-up (default 0.001)")),
    ("--warmup-epochs", "warmup_epochs", dict(type=bounded_float(0.0, 1000.0), help="epochs of linear learning-rate "
                                              "warm-up, fractions allowed (default 1.0)")),
    ("--weight-decay", "weight_decay", dict(type=bounded_float(0.0, 1.0), help="weight decay (default 0.05)")),
    ("--label-smoothing", "label_smoothing", dict(type=bounded_float(0.0, 0.5),
                                                  help="cross-entropy label smoothing (default 0.1)")),
    ("--optimizer", "optimizer", dict(choices=["sam", "asam", "adamw"],
                                      help="SAM or adaptive SAM around AdamW, or plain AdamW (default sam)")),
    ("--rho", "rho", dict(type=bounded_float(0.001, 10.0), help="SAM neighbourhood radius (default 0.05)")),
    ("--adapter", "adapter", dict(choices=["none", "bottleneck", "lora"], help="freeze the backbone and train "
                                  "adapters / LoRA only (merged before export) (default none)")),
    ("--adapter-reduction", "adapter_reduction", dict(type=bounded_int(1, 1024),
                                                      help="bottleneck adapter width = dim / this (default 16)")),
    ("--lora-rank", "lora_rank", dict(type=bounded_int(1, 1024), help="rank of the LoRA updates (default 8)")),
    ("--synthetic", "synthetic", dict(action="append", metavar="DIR", help="synthetic dataset (ICBHI layout or class "
                                      "folders) added to TRAINING only; repeatable (default: none)")),
    ("--aft", "aft", dict(action="store_const", const=True, help="adversarial fine-tuning: domain head behind "
                          "gradient reversal; needs --synthetic (default: off)")),
    ("--aft-lambda", "aft_lambda", dict(type=bounded_float(1e-6, 100.0), help="weight of the domain loss (default 0.2)")),
    ("--augment", "augment", dict(help="augmentation policy name from stethoedge.train.augment, e.g. specaugment "
                                  "(default: none)")),
    ("--distill-from", "distill_from", dict(metavar="RUN", help="teacher run directory for distillation "
                                            "(default: none)")),
    ("--ema", "ema_decay", dict(type=bounded_float(0.5, 0.999999), help="weight EMA decay, e.g. 0.999 (default off)")),
    ("--amp", "amp", dict(choices=["none", "bf16", "fp16"], help="mixed precision; bf16 works on CPU (default none)")),
    ("--early-stopping", "early_stopping", dict(type=bounded_int(0, 10_000), help="stop after this many epochs "
                                                "without a better validation Score; 0 = never (default 0)")),
    ("--checkpoint-every", "checkpoint_every", dict(type=bounded_int(0, 10_000_000), help="save resumable state "
                                                    "every N steps; 0 = at the end of each epoch only (default 0)")),
    ("--no-resume", "resume", dict(action="store_const", const=False,
                                   help="start over even if RUN/state.pt exists (default: resume from it)")),
    ("--cache", "cache_dir", dict(help="directory caching fbank features between runs (default: none)")),
    ("--no-weighted-sampler", "weighted_sampler", dict(action="store_const", const=False, help="shuffle instead of "
                                                       "inverse-frequency sampling (default: off)")),
    ("--val-fraction", "val_fraction", dict(type=bounded_float(0.05, 0.9), help="fraction of TRAIN patients held out "
                                            "for model selection (default 0.25)")),
    ("--seed", "seed", dict(type=bounded_int(0, MAX_SEED),
                            help="seed of the split, the initialisation and the sampling (default 0)")),
    ("--threads", "threads", dict(type=bounded_int(1, MAX_THREADS), help="torch CPU threads (default one per core)")),
    ("--device", "device", dict(help="cpu, cuda, cuda:1 (default: cuda when available)")),
)


def _toml_module() -> Any:
    """The TOML reader: ``tomllib`` (Python 3.11+) or its backport ``tomli`` on 3.10 (the train extra pins it)."""
    try:
        import tomllib  # novm: guarded, tomli below on 3.10
    except ModuleNotFoundError:  # Python 3.10 (JetPack 6): same API, same TOMLDecodeError
        import tomli as tomllib
    return tomllib


def load_config_file(path: str) -> dict:
    """Training options from a recipe (.toml: flat keys and/or RunConfig tables such as ``[optim]``) or a run's
    config.json (its "run" table, the nested RunConfig; or the flat "train" table of runs written before it)."""
    from stethoedge.runtime.errors import DataError

    toml = _toml_module()
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such config file")
    try:
        if p.suffix == ".json":
            values = json.loads(p.read_text())
            if isinstance(values, dict):
                values = values.get("run", values.get("train", values))
        else:
            values = toml.loads(p.read_text())
    except (ValueError, toml.TOMLDecodeError) as exc:
        raise DataError(f"{path}: not valid {'JSON' if p.suffix == '.json' else 'TOML'} ({exc})") from None
    if not isinstance(values, dict):
        raise DataError(f"{path}: expected a table of training options")
    return values


def build_run_config(args: argparse.Namespace):
    """The RunConfig of `stethoedge train`: the recipe / config.json (if any) overridden by the flags given."""
    from stethoedge.runtime.errors import DataError
    from stethoedge.train.run_config import RunConfig, nest, set_flat

    values = nest(load_config_file(args.config)) if args.config else {}
    for _, dest, _ in TRAIN_FLAGS:
        value = getattr(args, dest, None)
        if value is not None:
            set_flat(values, dest, value)
    if not (values.get("data") or {}).get("root"):
        raise DataError("--data is required (on the command line or in --config)")
    if not values.get("out"):
        raise DataError("--out is required (on the command line or in --config)")
    return RunConfig.from_dict(values)


#: The name of the first version.
build_train_config = build_run_config


def _print_metrics(metrics: dict) -> None:
    for split in ("val", "test"):
        m = metrics.get(split)
        if m:
            auroc = m.get("auroc", {}).get("macro", float("nan"))
            print(f"{split:>4}: Sp {m['specificity']:.3f}  Se {m['sensitivity']:.3f}  Score {m['score']:.3f}  "
                  f"macro-F1 {m['macro_f1']:.3f}  AUROC {auroc:.3f}  (n={m['n']})")


def cmd_train(args: argparse.Namespace) -> int:
    from stethoedge.runtime.outputs import check_output_dir
    from stethoedge.train.trainer import train, train_seeds

    cfg = build_run_config(args)
    # runtime/outputs.py: the run directory's parent must exist, and it is none of the inputs
    check_output_dir(cfg.out, [cfg.data.root, *cfg.data.synthetic, cfg.model.init, cfg.distill.teacher, args.config])
    if args.seeds:
        summary = train_seeds(cfg, args.seeds)
        for split in ("val", "test"):
            for key, v in summary.get(split, {}).items():
                print(f"{split:>4} {key:<12} {v['mean']:.3f} +- {v['sd']:.3f}  (n={v['n']} seeds)")
        print(f"runs written to {cfg.out}/seed-N; summary in {cfg.out}/summary.json")
        return 0
    metrics = train(cfg)
    if "stopped_at_step" in metrics:
        return 0
    if metrics:
        _print_metrics(metrics)
        print(f"best epoch {metrics['best_epoch']} (selected on validation); run written to {cfg.out}")
    return 0


def cmd_train_edge(args: argparse.Namespace) -> int:
    from stethoedge.runtime.outputs import check_output_dir
    from stethoedge.train.edge_learner import EdgeRecipe, run_recipe

    check_output_dir(args.out, [args.recipe])  # its parent must exist (runtime/outputs.py)
    values = load_config_file(args.recipe)
    values["out"] = args.out
    for key in ("epochs", "seed", "threads", "cache_dir"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    metrics = run_recipe(EdgeRecipe.from_dict(values))
    for key in ("test-inter/sprsound", "eval/icbhi"):
        for name, rep in metrics["evaluation"].get(key, {}).items():
            m = rep["metrics"]
            print(f"{key:<22} {name:<30} ICBHI Score {m['icbhi_score']:.3f}  SPRSound binary Score "
                  f"{m['binary_score']:.3f}")
    print(f"run written to {args.out} (export it: stethoedge export {args.out} --out BUNDLE)")
    return 0


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser."""
    p = add("simulate", cmd_simulate, "Write a synthetic respiratory-sound dataset in the ICBHI 2017 layout.")
    p.add_argument("--out", required=True,
                   help="output directory, new (its parent must exist) or empty; a non-empty one is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous simulation in --out (only the files it listed; anything else is refused) "
                   "(default: off, --out must be new or empty)")
    p.add_argument("--patients", type=bounded_int(1, 10_000), default=16,
                   help="number of simulated patients (default 16)")
    p.add_argument("--recordings", type=bounded_int(1, 1000), default=3, help="recordings per patient (default 3)")
    p.add_argument("--duration", type=bounded_float(8.0, 600.0), default=20.0,
                   help="seconds per recording, a few breaths at least (default 20)")
    p.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0,
                   help="random seed; same seed, same bytes (default 0)")

    p = add("train-edge", cmd_train_edge, "Fine-tune the AudioSet-pretrained EfficientAT mn04 on real recordings "
            "(SPRSound + ICBHI) with a recipe; resumable; writes a run directory with its evaluation.")
    p.add_argument("--recipe", required=True, help="recipe .toml (e.g. train/recipes/real-edge.toml)")
    p.add_argument("--out", required=True, help="run directory (an interrupted run here resumes)")
    p.add_argument("--epochs", type=bounded_int(1, 10_000), default=None,
                   help="epochs (default the recipe's: 10 in real-edge.toml)")
    p.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=None,
                   help="training seed (default the recipe's: 0 in real-edge.toml)")
    p.add_argument("--threads", type=bounded_int(1, MAX_THREADS), default=None, help="torch threads (default the recipe's)")
    p.add_argument("--cache-dir", default=None, help="feature/trunk cache (default: the recipe's)")

    p = add("train", cmd_train, "Train the AST classifier on an ICBHI-layout directory; writes a run directory.")
    p.description += (" Each option left out takes its value from --config when given, else the default shown "
                      "(RunConfig in train/run_config.py).")
    p.add_argument("--config", default=None,
                   help="recipe (.toml, e.g. train/recipes/edge-student.toml) or a run's config.json; flags override it "
                   "(default: none)")
    p.add_argument("--seeds", type=bounded_int_list(0, MAX_SEED), default=None,
                   help="e.g. 1,2,3: one run per seed under OUT/seed-N, mean +- sd "
                   "(default one run, with --seed)")
    for flag, dest, kwargs in TRAIN_FLAGS:
        p.add_argument(flag, dest=dest, default=None, **kwargs)
