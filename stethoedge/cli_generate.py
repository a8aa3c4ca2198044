"""Generative-augmentation subcommands: ``generate fit|sample|eval|mixed`` and ``experiment``."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from stethoedge.cli_common import AddCommand
from stethoedge.cli_common import MAX_SEED, MAX_THREADS, bounded_float, bounded_int

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


def _kind_overrides(pairs: list[str] | None, kinds: list[str]) -> dict[str, dict[str, Any]]:
    """``KIND.KEY=VALUE`` pairs -> {kind: {key: value}}; ``diffwave`` is the vocoder, others must be in ``kinds``."""
    from stethoedge.runtime.errors import DataError

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        kind, dot, rest = pair.partition(".")
        if not dot or kind not in KINDS:
            raise DataError(f"--set {pair!r}: expected KIND.KEY=VALUE with KIND one of {', '.join(KINDS)}")
        if kind != "diffwave" and kind not in kinds:
            raise DataError(f"--set {pair!r}: {kind} is not in --kinds ({', '.join(kinds) or 'none'})")
        out.setdefault(kind, {}).update(_overrides([rest]))
    return out


def _seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> [0, 1, 2]; anything else is a DataError naming the option."""
    from stethoedge.runtime.errors import DataError

    items = _csv(text)
    if not items or not all(i.isdigit() and int(i) <= MAX_SEED for i in items):
        raise DataError(f"--seeds {text!r}: expected comma-separated integers from 0 to {MAX_SEED}")
    return [int(i) for i in items]


def cmd_fit(args: argparse.Namespace) -> int:
    from stethoedge.runtime.outputs import check_output, files_under
    from stethoedge.train.generators import create
    from stethoedge.train.generators.base import parse_classes
    from stethoedge.train.generators.data import load_melsets

    check_output(args.out, files_under(args.data))  # runtime/outputs.py: its directory must exist
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

    from stethoedge.runtime.outputs import open_output

    with open_output(path) as f:
        np.savez_compressed(f, **arrays)


def _check_out_dir(args: argparse.Namespace, *inputs: Any) -> None:
    """Before any work: a directory --out is replaced only with --force, never holding an input."""
    from stethoedge.runtime.errors import DataError
    from stethoedge.runtime.outputs import check_output_dir

    if os.path.lexists(args.out) and not args.force:
        raise DataError(f"{args.out}: already exists (pass --force to replace it)")
    check_output_dir(args.out, inputs, replace=True)


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from stethoedge.runtime.errors import DataError
    from stethoedge.runtime.outputs import check_output, files_under
    from stethoedge.train.generators import load
    from stethoedge.train.generators.base import parse_classes
    from stethoedge.train.generators.data import load_melsets
    from stethoedge.train.mixed import synthesize_waveforms, write_icbhi_dir

    inputs = [args.model, args.vocoder, args.data]
    if args.vocoder or os.path.isdir(args.out):  # a directory of WAVs
        _check_out_dir(args, *inputs)
    else:  # an .npz of mels (or, for diffwave, a directory: checked once the model is known)
        check_output(args.out, [*inputs, *files_under(args.data)])
    generator = load(args.model).to(args.device)
    if generator.kind == "diffwave" and not args.vocoder:
        _check_out_dir(args, *inputs)
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
                        overwrite=args.force, inputs=inputs)
        print(f"wrote {len(waves)} {args.cls} waveforms ({waves.shape[1] / generator.spec.sample_rate:.2f} s each) to {out}")
    else:
        mels = generator.sample(cls, args.n, seed=args.seed).numpy()
        _atomic_npz(out, mels=mels, labels=np.full(len(mels), cls), spec=json.dumps(generator.spec.to_dict()))
        print(f"wrote {len(mels)} {args.cls} mels of shape {mels.shape[1:]} (frames, mels) to {out}")
    elapsed = time.perf_counter() - started
    print(f"generated {args.n} samples in {elapsed:.2f} s ({args.n / elapsed:.2f} samples/s on {args.device})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from stethoedge.runtime.outputs import check_output_dir
    from stethoedge.train.generative_eval import ClassifierEmbedder, evaluate_generator, report_table, write_report
    from stethoedge.train.generators import load
    from stethoedge.train.generators.data import load_melsets

    check_output_dir(args.out, [args.model, args.data, args.run])  # report directory: its parent must exist
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

    inputs = [args.model, args.vocoder, args.data]
    _check_out_dir(args, *inputs)
    generator = load(args.model).to(args.device)
    vocoder = load(args.vocoder).to(args.device) if args.vocoder else None
    train_set = load_melsets(args.data, generator.config.n_mels, generator.config.n_frames, spec=generator.spec)["train"]
    plan = plan_counts(train_set.class_counts(), args.n, args.mode, classes=generator.classes)
    out = write_mixed_dataset(args.out, generator, plan, vocoder=vocoder, source=train_set, seed=args.seed,
                              overwrite=args.force, inputs=inputs)
    print(f"Mixed-N ({args.mode}, N={args.n}): {json.dumps(plan)} synthetic cycles per class index written to {out}; "
          f"train with: stethoedge train --data {args.data} --synthetic {out}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from stethoedge.runtime.outputs import check_output_dir
    from stethoedge.train.experiment import ExperimentConfig, run_experiment
    from stethoedge.train.generators.base import parse_classes

    check_output_dir(args.out, [args.data])  # its parent must exist (runtime/outputs.py)
    width = {"width": args.width} if args.width != 1.0 else {}
    kinds = _csv(args.kinds)
    per_kind = _kind_overrides(args.set, kinds)
    cfg = ExperimentConfig(
        data=args.data, out=args.out, kinds=kinds, seeds=_seeds(args.seeds),
        preset=args.preset, epochs=args.epochs, batch_size=args.batch_size, n=args.n, mode=args.mode,
        gen_classes=parse_classes(_csv(args.classes)) if args.classes else None, n_mels=args.n_mels,
        n_frames=args.n_frames, gen_steps=args.gen_steps, vocoder_steps=args.vocoder_steps,
        generator_config={k: {**width, **per_kind.get(k, {})} for k in kinds},
        vocoder_config={**width, **per_kind.get("diffwave", {})}, aft=args.aft,
        ensemble=not args.no_ensemble, device=args.device, threads=args.threads)
    record = run_experiment(cfg)
    from stethoedge.train.experiment import comparison_table

    print(comparison_table(record["summary"]))
    print(f"test split, {len(cfg.seeds)} seed(s); details in {Path(args.out) / 'experiment.json'}")
    return 0


def _size_options(p: argparse.ArgumentParser, width_of: str) -> None:
    """--n-mels, --n-frames, --width: the size of a generated sample and of the networks."""
    p.add_argument("--n-mels", type=bounded_int(16, 512), default=128,
                   help="mel bands per generated sample; a multiple of 16 for vae, wgan-gp, se-cgan, of 4 for "
                   "ddpm (default %(default)s)")
    p.add_argument("--n-frames", type=bounded_int(16, 4096), default=256,
                   help="frames per generated sample, 10 ms each; same rule as --n-mels (default %(default)s)")
    p.add_argument("--width", type=bounded_float(0.01, 16.0), default=1.0,
                   help=f"channel multiplier of {width_of}; 0.125 makes CPU-sized networks (default %(default)s)")


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=bounded_int(1, MAX_THREADS), default=None,
                   help="torch CPU threads; take 1 when other jobs share the cores, where two threads can run "
                   "40x slower (default one per core)")


def _threaded(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``cmd`` run with ``--threads`` torch CPU threads."""
    def run(args: argparse.Namespace) -> int:
        from stethoedge.train.progress import torch_threads

        with torch_threads(args.threads):
            return cmd(args)

    return run


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0,
                   help="random seed; the same seed gives the same result (default %(default)s)")
    _threads_option(p)


def register(add: AddCommand) -> None:
    """Add ``generate`` (fit, sample, eval, mixed) and ``experiment``."""
    g = add("generate", lambda a: (g.print_help(), 1)[1],
            "Generative augmentation: fit / sample / evaluate generators, write Mixed-N datasets.")
    sub = g.add_subparsers(dest="generate_command", metavar="ACTION")

    p = sub.add_parser("fit", help="train a generator on the TRAIN split's cycles (resumable)")
    p.set_defaults(func=_threaded(cmd_fit))
    p.add_argument("--kind", required=True, choices=KINDS,
                   help="generator to train: vae, wgan-gp, se-cgan, ddpm (mels) or diffwave (the vocoder)")
    p.add_argument("--data", required=True, help="ICBHI-layout dataset root")
    p.add_argument("--out", required=True, help="generator checkpoint file (also the resume point)")
    p.add_argument("--steps", type=bounded_int(1, 10_000_000), default=2000,
                   help="total optimisation steps, counted from 0 also when resuming (default %(default)s)")
    p.add_argument("--classes", default=None,
                   help="train only on these classes, e.g. crackle,wheeze,both (default: all four)")
    _size_options(p, "every layer")
    p.add_argument("--batch-size", type=bounded_int(1, 65_536), default=None,
                   help="samples per step (default: the kind's own, 32; diffwave 16)")
    p.add_argument("--lr", type=bounded_float(1e-7, 1.0), default=None,
                   help="learning rate (default: the kind's own: vae 1e-3, wgan-gp 5e-5, the others 2e-4)")
    p.add_argument("--checkpoint-every", type=bounded_int(1, 10_000_000), default=500,
                   help="write the checkpoint (--out) every N steps and at the end (default %(default)s)")
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh even if --out exists (default: resume from it)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="another config field of the kind, e.g. latent=64 or layers=6; repeatable (default: none)")
    _common(p)

    p = sub.add_parser("sample", help="generate samples of one class (mels .npz, or WAVs through a vocoder)")
    p.set_defaults(func=_threaded(cmd_sample))
    p.add_argument("--model", required=True, help="generator checkpoint from `generate fit`")
    p.add_argument("--class", dest="cls", required=True, help="class to generate: normal, crackle, wheeze or both")
    p.add_argument("--n", type=bounded_int(1, 100_000), default=8, help="samples to generate (default %(default)s)")
    p.add_argument("--out", required=True, help=".npz of mels, or a directory of WAVs with --vocoder / diffwave")
    p.add_argument("--vocoder", default=None,
                   help="DiffWave checkpoint: write audio instead of mels (default: none, mels are written)")
    p.add_argument("--data", default=None,
                   help="dataset whose real mels diffwave re-synthesises (needed for a diffwave --model; default none)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory (default: refuse)")
    _common(p)

    p = sub.add_parser("eval", help="quality table + PNG grid: Frechet distance, precision/recall, memorisation, TSTR")
    p.set_defaults(func=_threaded(cmd_eval))
    p.add_argument("--model", required=True, help="mel generator checkpoint from `generate fit`")
    p.add_argument("--data", required=True, help="the dataset the generator was trained on")
    p.add_argument("--out", required=True, help="report directory (quality.md, quality.json, grid.png)")
    p.add_argument("--run", default=None, help="classifier run: Frechet distance in its embedding space (FAD-style; "
                   "default: none, pooled mels)")
    p.add_argument("--n", type=bounded_int(1, 100_000), default=64, help="samples per class (default %(default)s)")
    p.add_argument("--tstr-epochs", type=bounded_int(1, 10_000), default=30,
                   help="epochs of the small CNN trained on synthetic / on real mels (default %(default)s)")
    _common(p)

    p = sub.add_parser("mixed", help="write a Mixed-N synthetic dataset (ICBHI layout) for train --synthetic")
    p.set_defaults(func=_threaded(cmd_mixed))
    p.add_argument("--model", required=True, help="generator checkpoint (diffwave: re-synthesis of real mels)")
    p.add_argument("--vocoder", default=None, help="trained DiffWave checkpoint turning mels into audio (`generate fit "
                   "--kind diffwave --steps N` trains one; needed unless --model is diffwave; default none)")
    p.add_argument("--data", required=True, help="the real dataset (class counts; re-synthesis source)")
    p.add_argument("--out", required=True, help="directory to write (ICBHI layout); its parent must exist")
    p.add_argument("--n", type=bounded_int(0, 100_000), default=50,
                   help="samples per class (balance: a cap, 0 = none) (default %(default)s)")
    p.add_argument("--mode", default="minority", choices=["per-class", "minority", "balance"],
                   help="per-class: N for each class; minority: N for every class but the largest; balance: top "
                   "each class up to the largest (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory (default: refuse)")
    _common(p)

    p = add("experiment", cmd_experiment,
            "Baseline vs each generator (Mixed-N) vs ensemble under the same seeds; one comparison table.")
    p.add_argument("--data", required=True, help="ICBHI-layout dataset root (e.g. from `stethoedge simulate`)")
    p.add_argument("--out", required=True, help="experiment directory: runs, generators, synthetic sets, "
                   "experiment.json, comparison.md")
    p.add_argument("--kinds", default="vae,wgan-gp,se-cgan,ddpm",
                   help="comma list of generators to compare; diffwave = vocoder re-synthesis (default %(default)s)")
    p.add_argument("--seeds", default="0,1,2",
                   help="comma list; every condition runs once per seed (default %(default)s)")
    p.add_argument("--preset", default="nano", choices=["micro", "nano", "tiny", "small", "base"],
                   help="classifier size, as train --preset (default %(default)s)")
    p.add_argument("--epochs", type=bounded_int(1, 10_000), default=8,
                   help="classifier epochs per run (default %(default)s)")
    p.add_argument("--batch-size", type=bounded_int(1, 65_536), default=16,
                   help="classifier batch size (default %(default)s)")
    p.add_argument("--n", type=bounded_int(0, 100_000), default=50,
                   help="synthetic cycles per class, as generate mixed --n (default %(default)s)")
    p.add_argument("--mode", default="minority", choices=["per-class", "minority", "balance"],
                   help="Mixed-N mode, as generate mixed --mode (default %(default)s)")
    p.add_argument("--classes", default=None,
                   help="classes the generators train on and synthesise, e.g. crackle,wheeze,both (default: all)")
    _size_options(p, "every generator and the vocoder")
    p.add_argument("--gen-steps", type=bounded_int(1, 10_000_000), default=2000,
                   help="training steps of each mel generator (default %(default)s)")
    p.add_argument("--vocoder-steps", type=bounded_int(1, 10_000_000), default=2000,
                   help="training steps of the DiffWave vocoder (one per seed), the slowest part on a CPU "
                   "(default %(default)s)")
    p.add_argument("--set", action="append", metavar="KIND.KEY=VALUE",
                   help="a config field of one generator, diffwave = the vocoder, e.g. diffwave.layers=6, "
                   "diffwave.batch_size=4, vae.latent=32; repeatable (default: the full sizes of docs/GENERATIVE.md)")
    p.add_argument("--aft", action="store_true",
                   help="train the Mixed-N classifiers with adversarial fine-tuning (default: off)")
    p.add_argument("--no-ensemble", action="store_true",
                   help="skip the probability-averaging ensemble of each seed's runs (default: evaluate it)")
    p.add_argument("--device", default="cpu",
                   help="torch device for the generators: cpu, cuda or cuda:N (default %(default)s)")
    _threads_option(p)
