"""Generative-augmentation subcommands: ``generate fit|sample|eval|mixed`` and ``experiment``."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from stethoedge.cli_common import AddCommand
from stethoedge.cli_common import positive_int as _positive_int

KINDS = ("vae", "wgan-gp", "se-cgan", "ddpm", "diffwave")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as JSON when they can be, e.g. 0.5, [64,128], true)."""
    from stethoedge.runtime.errors import DataError

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise DataError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out[key.strip().replace("-", "_")] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def cmd_fit(args: argparse.Namespace) -> int:
    from stethoedge.train.generators import create
    from stethoedge.train.generators.base import parse_classes
    from stethoedge.train.generators.data import load_melsets

    config = {"n_mels": args.n_mels, "n_frames": args.n_frames, "width": args.width, "seed": args.seed,
              **({"batch_size": args.batch_size} if args.batch_size else {}), **({"lr": args.lr} if args.lr else {}),
              **_overrides(args.set)}
    sets = load_melsets(args.data, args.n_mels, args.n_frames, with_audio=args.kind == "diffwave", seed=args.seed)
    generator = create(args.kind, spec=sets["train"].spec, **config).to(args.device)
    classes = parse_classes(_csv(args.classes)) if args.classes else None
    start_step, started = generator.step, time.perf_counter()
    losses = generator.fit(sets["train"], classes=classes, steps=args.steps, checkpoint=args.out,
                           checkpoint_every=args.checkpoint_every, resume=not args.no_resume)
    tail = losses[-min(20, len(losses)):]
    print(f"{args.kind}: {generator.step} steps on {len(sets['train'].subset(classes))} training cycles "
          f"(classes {', '.join(generator_class_names(generator))}); mean loss of the last {len(tail)} steps "
          f"{sum(tail) / max(1, len(tail)):.4f}; saved to {args.out}")
    elapsed = time.perf_counter() - started
    done = generator.step - start_step
    if done:
        print(f"trained {done} steps in {elapsed:.1f} s ({done / elapsed:.2f} steps/s on {args.device})")
    return 0


def generator_class_names(generator: Any) -> list[str]:
    """Names of the classes a generator was trained on."""
    from stethoedge.runtime.labels import CLASSES

    return [CLASSES[c] for c in generator.classes or []]


def _atomic_npz(path: Path, **arrays: Any) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from stethoedge.runtime.errors import DataError
    from stethoedge.train.generators import load
    from stethoedge.train.generators.base import parse_classes
    from stethoedge.train.generators.data import load_melsets
    from stethoedge.train.mixed import synthesize_waveforms, write_icbhi_dir

    generator = load(args.model).to(args.device)
    cls = parse_classes([args.cls])[0]
    vocoder = load(args.vocoder).to(args.device) if args.vocoder else None
    source = None
    if generator.kind == "diffwave":
        if not args.data:
            raise DataError("diffwave re-synthesises real mels: pass --data DIR (its TRAIN split is used)")
        source = load_melsets(args.data, generator.config.n_mels, generator.config.n_frames, spec=generator.spec)["train"]
    out = Path(args.out)
    started = time.perf_counter()
    if generator.kind == "diffwave" or vocoder is not None:
        waves = synthesize_waveforms(generator, cls, args.n, vocoder, source, seed=args.seed)
        write_icbhi_dir(out, {cls: waves}, generator.spec.sample_rate, {"generator": generator.kind, "seed": args.seed},
                        overwrite=args.force)
        print(f"wrote {len(waves)} {args.cls} waveforms ({waves.shape[1] / generator.spec.sample_rate:.2f} s each) to {out}")
    else:
        mels = generator.sample(cls, args.n, seed=args.seed).numpy()
        _atomic_npz(out, mels=mels, labels=np.full(len(mels), cls), spec=json.dumps(generator.spec.to_dict()))
        print(f"wrote {len(mels)} {args.cls} mels of shape {mels.shape[1:]} (frames, mels) to {out}")
    elapsed = time.perf_counter() - started
    print(f"generated {args.n} samples in {elapsed:.2f} s ({args.n / elapsed:.2f} samples/s on {args.device})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from stethoedge.train.generative_eval import ClassifierEmbedder, evaluate_generator, report_table, write_report
    from stethoedge.train.generators import load
    from stethoedge.train.generators.data import load_melsets

    generator = load(args.model).to(args.device)
    if generator.kind == "diffwave":
        from stethoedge.runtime.errors import DataError

        raise DataError("eval scores mel generators; evaluate the vocoder through a Mixed-N experiment instead")
    sets = load_melsets(args.data, generator.config.n_mels, generator.config.n_frames, spec=generator.spec)
    embed = ClassifierEmbedder(args.run) if args.run else None
    report = evaluate_generator(generator, sets["train"], sets.get("test"), embed=embed, n_per_class=args.n,
                                seed=args.seed, tstr_epochs=args.tstr_epochs)
    files = write_report(report, sets["train"], args.out)
    print(report_table(report))
    print(f"embedding space: {'classifier ' + str(args.run) if args.run else 'pooled mels (no --run given)'}")
    print(f"wrote {files['table']}, {files['json']} and {files['grid']}")
    return 0


def cmd_mixed(args: argparse.Namespace) -> int:
    from stethoedge.train.generators import load
    from stethoedge.train.generators.data import load_melsets
    from stethoedge.train.mixed import plan_counts, write_mixed_dataset

    generator = load(args.model).to(args.device)
    vocoder = load(args.vocoder).to(args.device) if args.vocoder else None
    train_set = load_melsets(args.data, generator.config.n_mels, generator.config.n_frames, spec=generator.spec)["train"]
    plan = plan_counts(train_set.class_counts(), args.n, args.mode, classes=generator.classes)
    out = write_mixed_dataset(args.out, generator, plan, vocoder=vocoder, source=train_set, seed=args.seed,
                              overwrite=args.force)
    print(f"Mixed-N ({args.mode}, N={args.n}): {json.dumps(plan)} synthetic cycles per class index written to {out}; "
          f"train with: stethoedge train --data {args.data} --synthetic {out}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from stethoedge.train.experiment import ExperimentConfig, run_experiment
    from stethoedge.train.generators.base import parse_classes

    width = {"width": args.width} if args.width != 1.0 else {}
    cfg = ExperimentConfig(
        data=args.data, out=args.out, kinds=_csv(args.kinds), seeds=[int(s) for s in _csv(args.seeds)],
        preset=args.preset, epochs=args.epochs, n=args.n, mode=args.mode,
        gen_classes=parse_classes(_csv(args.classes)) if args.classes else None, n_mels=args.n_mels,
        n_frames=args.n_frames, gen_steps=args.gen_steps, vocoder_steps=args.vocoder_steps,
        generator_config={k: dict(width) for k in _csv(args.kinds)}, vocoder_config=dict(width), aft=args.aft,
        ensemble=not args.no_ensemble, device=args.device)
    record = run_experiment(cfg)
    from stethoedge.train.experiment import comparison_table

    print(comparison_table(record["summary"]))
    print(f"test split, {len(cfg.seeds)} seed(s); details in {Path(args.out) / 'experiment.json'}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--seed", type=int, default=0)


def register(add: AddCommand) -> None:
    """Add ``generate`` (fit, sample, eval, mixed) and ``experiment``."""
    g = add("generate", lambda a: (g.print_help(), 1)[1],
            "Generative augmentation: fit / sample / evaluate generators, write Mixed-N datasets.")
    sub = g.add_subparsers(dest="generate_command", metavar="ACTION")

    p = sub.add_parser("fit", help="train a generator on the TRAIN split's cycles (resumable)")
    p.set_defaults(func=cmd_fit)
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--data", required=True, help="ICBHI-layout dataset root")
    p.add_argument("--out", required=True, help="generator checkpoint file (also the resume point)")
    p.add_argument("--steps", type=_positive_int, default=2000, help="total optimisation steps")
    p.add_argument("--classes", default=None, help="train only on these classes, e.g. crackle,wheeze,both")
    p.add_argument("--n-mels", type=_positive_int, default=128)
    p.add_argument("--n-frames", type=_positive_int, default=256, help="frames per sample (10 ms each)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of every layer")
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--checkpoint-every", type=_positive_int, default=500)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out exists")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="other config fields, e.g. latent=64")
    _common(p)

    p = sub.add_parser("sample", help="generate samples of one class (mels .npz, or WAVs through a vocoder)")
    p.set_defaults(func=cmd_sample)
    p.add_argument("--model", required=True, help="generator checkpoint")
    p.add_argument("--class", dest="cls", required=True, help="normal, crackle, wheeze or both")
    p.add_argument("--n", type=_positive_int, default=8)
    p.add_argument("--out", required=True, help=".npz of mels, or a directory of WAVs with --vocoder / diffwave")
    p.add_argument("--vocoder", default=None, help="DiffWave checkpoint: write audio instead of mels")
    p.add_argument("--data", default=None, help="dataset whose real mels diffwave re-synthesises")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    _common(p)

    p = sub.add_parser("eval", help="quality table + PNG grid: Frechet distance, precision/recall, memorisation, TSTR")
    p.set_defaults(func=cmd_eval)
    p.add_argument("--model", required=True, help="generator checkpoint")
    p.add_argument("--data", required=True, help="the dataset the generator was trained on")
    p.add_argument("--out", required=True, help="report directory (quality.md, quality.json, grid.png)")
    p.add_argument("--run", default=None, help="classifier run: Frechet distance in its embedding space (FAD-style)")
    p.add_argument("--n", type=_positive_int, default=64, help="generated samples per class")
    p.add_argument("--tstr-epochs", type=_positive_int, default=30)
    _common(p)

    p = sub.add_parser("mixed", help="write a Mixed-N synthetic dataset (ICBHI layout) for train --synthetic")
    p.set_defaults(func=cmd_mixed)
    p.add_argument("--model", required=True, help="generator checkpoint (diffwave: re-synthesis of real mels)")
    p.add_argument("--vocoder", default=None, help="DiffWave checkpoint turning mels into audio")
    p.add_argument("--data", required=True, help="the real dataset (class counts; re-synthesis source)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=50, help="samples per class (balance: cap, 0 = none)")
    p.add_argument("--mode", default="minority", choices=["per-class", "minority", "balance"])
    p.add_argument("--force", action="store_true")
    _common(p)

    p = add("experiment", cmd_experiment,
            "Baseline vs each generator (Mixed-N) vs ensemble under the same seeds; one comparison table.")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kinds", default="vae,wgan-gp,se-cgan,ddpm", help="comma list; diffwave = vocoder re-synthesis")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--preset", default="nano", help="classifier preset")
    p.add_argument("--epochs", type=_positive_int, default=8)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--mode", default="minority", choices=["per-class", "minority", "balance"])
    p.add_argument("--classes", default=None, help="classes the generators train on (default all)")
    p.add_argument("--n-mels", type=_positive_int, default=128)
    p.add_argument("--n-frames", type=_positive_int, default=256)
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of every generator")
    p.add_argument("--gen-steps", type=_positive_int, default=2000)
    p.add_argument("--vocoder-steps", type=_positive_int, default=2000)
    p.add_argument("--aft", action="store_true", help="train the Mixed-N classifiers with adversarial fine-tuning")
    p.add_argument("--no-ensemble", action="store_true")
    p.add_argument("--device", default="cpu")
