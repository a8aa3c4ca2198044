"""The ``stethoedge`` command line: parses arguments and calls library functions, nothing else.

Every stage is imported only when its subcommand runs, so ``classify`` and ``bench`` work on a
device that installed only ``stethoedge[runtime]`` (no torch).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from stethoedge import __version__
from stethoedge.cli_common import annotate_ranges, bounded_int
from stethoedge.runtime.errors import StethoedgeError


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from stethoedge.demo import run_demo
    from stethoedge.export.quiet import quiet_third_party

    with quiet_third_party(verbose=args.verbose):  # torchao/TF start-up chatter (export/quiet.py); -v shows it
        run_demo(Path(args.out), real_audio=args.real, weights=args.weights, epochs=args.epochs, patients=args.patients)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by tests to check every --help)."""
    parser = argparse.ArgumentParser(prog="stethoedge", description="Respiratory-sound classification "
                                     "(normal / crackle / wheeze / both) from training to the stethoscope.")
    parser.add_argument("--version", action="version", version=f"stethoedge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    from stethoedge import cli_exam, cli_export, cli_generate, cli_runtime, cli_train

    for module in (cli_train, cli_generate, cli_export, cli_runtime, cli_exam):
        module.register(add)

    p = add("demo", cmd_demo, "End to end: the shipped model on real recordings, then simulate -> retrain the "
                              "pretrained backbone -> export -> classify -> bench.")
    p.add_argument("--out", default="out/demo",
                   help="working directory; a previous demo's outputs there are replaced (default %(default)s)")
    p.add_argument("--real", default=None,
                   help="annotated real recordings (ICBHI layout: a folder, or one WAV/FLAC with its .txt beside it) "
                   "(default: none, step 1 is skipped)")
    p.add_argument("--weights", default=None, help="EfficientAT AudioSet weights the retraining starts from "
                   "(e.g. ../shared/weights/efficientat_mn04_as.pt); needed from step 3 on (default: none)")
    p.add_argument("--epochs", type=bounded_int(1, 1000), default=6,
                   help="epochs of the retraining, 1024 sampled windows each (default 6, 1-1000)")
    p.add_argument("--patients", type=bounded_int(5, 10000), default=20,
                   help="simulated patients to retrain on, 3 recordings of 20 s each (default 20)")

    try:
        from stethoedge.firmware_bridge.cli import add_bridge_parser
    except ImportError:  # pyserial missing: the bridge subcommand is simply not offered
        pass
    else:
        add_bridge_parser(sub)
    annotate_ranges(parser)  # every range-checked option's help states its range
    return parser


#: Exit status when whoever reads our standard output goes away (``stethoedge classify A --jsonl - | head``):
#: 128 + SIGPIPE, what the shell reports for ``cat`` and ``yes`` in the same place.
EXIT_BROKEN_PIPE = 141


def _stdout_gone() -> int:
    """The reader of stdout closed the pipe: stop quietly, as Unix tools do (no traceback, no message).

    stdout is pointed at /dev/null so that the interpreter's final flush cannot fail again
    (the recipe of the Python documentation, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; a StethoedgeError becomes one line on stderr and exit code 2.

    Exit codes: 0 done, 1 partly done (e.g. some files of a batch failed), 2 error or usage error,
    3 a missing optional dependency, 130 interrupted, 141 (128 + SIGPIPE) the reader of stdout went away.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        return _stdout_gone()
    except StethoedgeError as exc:
        if isinstance(exc.__context__, BrokenPipeError):  # a writer to stdout that wrapped EPIPE in its error
            return _stdout_gone()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"error: {exc.name} is not installed; this command needs pip install 'stethoedge[{_extra_for(args.command)}]'",
              file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _extra_for(command: str) -> str:
    return {"train": "train", "train-edge": "train", "simulate": "train", "export": "export",
            "demo": "export"}.get(command, "runtime")


if __name__ == "__main__":
    raise SystemExit(main())
