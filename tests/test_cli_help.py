"""Every option of the whole parser (subcommands and nested actions) says what it does; the training side
also states its default."""
from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Iterator


from stethoedge.cli import build_parser

#: Commands whose every optional option must state its default (issue 15 item 16); runtime commands
#: (classify, listen, bench, ...) are held to "has a help" only.
STATE_DEFAULTS = {"train", "train-edge", "simulate", "experiment", "generate", "export", "build-engine", "demo",
                  "bridge"}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("stethoedge",)
         ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, argparse.Action]]:
    """(command path, parser, action) for every action of ``parser`` and its sub-parsers, at any depth."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))
        else:
            yield path, parser, action


ACTIONS = [(" ".join(path), parser, action) for path, parser, action in walk(build_parser())]


def _name(path: str, action: argparse.Action) -> str:
    return f"{path} {'/'.join(action.option_strings) or action.dest}"


def test_the_walk_reaches_nested_actions() -> None:
    paths = {path for path, _, _ in ACTIONS}
    assert {"stethoedge generate fit", "stethoedge generate mixed", "stethoedge experiment", "stethoedge classify",
            "stethoedge bridge simulate", "stethoedge bridge decode"} <= paths
    assert len(ACTIONS) > 150


def test_every_option_has_a_help_that_says_what_it_does() -> None:
    missing = []
    for path, _, action in ACTIONS:
        if isinstance(action, argparse._HelpAction):
            continue
        text = action.help
        # what is left without the "(default X, lo-hi)" that cli_common.annotate_ranges adds must still say something
        words = re.sub(r"\((default[^()]*|[-0-9.e+, ]*)\)", "", text or "") if text != argparse.SUPPRESS else ""
        if not re.search(r"[A-Za-z]{3}", words):
            missing.append(f"{_name(path, action)}: {text!r}")
    assert not missing, "options without a help saying what they do:\n" + "\n".join(missing)


def test_training_side_options_state_their_default() -> None:
    silent = [_name(path, action) for path, _, action in ACTIONS
              if path.split()[1:2] and path.split()[1] in STATE_DEFAULTS and action.option_strings
              and not action.required and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
              and "default" not in (action.help or "")]
    assert not silent, "options whose help does not state the default:\n" + "\n".join(silent)


def test_every_help_renders_with_its_defaults() -> None:
    parsers = {id(parser): parser for _, parser, _ in ACTIONS}
    for parser in parsers.values():
        text = parser.format_help()  # a stray "%" in a help raises here
        assert "%(default)s" not in text
    experiment = build_parser()._subparsers._group_actions[0].choices["experiment"].format_help()
    assert re.search(r"--vocoder-steps VOCODER_STEPS\s+training steps of the DiffWave vocoder.*\(default\s+2000",
                     experiment, re.S)


def test_train_help_defaults_are_runconfig_defaults() -> None:
    from stethoedge.train.run_config import FLAT, default_of

    defaults = {flat: default_of(path) for flat, path in FLAT.items()}
    checked = 0
    for path, _, action in ACTIONS:
        if path != "stethoedge train" or action.dest not in defaults or action.default not in (None, False):
            continue
        real = defaults[action.dest]
        m = re.search(r"\(default:? ([^,;)]+)", action.help or "")
        if m is None or isinstance(real, bool) or real is None or real in ("", []) or real is dataclasses.MISSING:
            continue  # "": --data / --out, required; []: --synthetic, none
        stated = m.group(1).strip()
        if stated == "off":
            assert not real, action.dest
        elif re.fullmatch(r"[\w.+-]+", stated):
            assert stated == str(real), f"--{action.dest}: help says {stated}, RunConfig has {real}"
        else:
            continue
        checked += 1
    assert checked >= 15



def test_train_flags_are_derived_from_runconfig_fields() -> None:
    """One table (cli_train.TRAIN_FLAGS) maps each flag to a RunConfig field; the fields without a flag are
    config-file only, on purpose."""
    from stethoedge.cli_train import TRAIN_FLAGS
    from stethoedge.train.run_config import FLAT, leaf_paths

    dests = [dest for _, dest, _ in TRAIN_FLAGS]
    assert len(dests) == len(set(dests))
    assert set(dests) <= set(FLAT), set(dests) - set(FLAT)
    assert set(FLAT.values()) == set(leaf_paths())
    config_only = {"feature_spec", "grad_clip", "drop_path", "adapter_where", "distill_temperature", "distill_alpha",
                   "stop_after_steps"}
    assert set(FLAT) - set(dests) == config_only
    train = {path: parser for path, parser, _ in ACTIONS}["stethoedge train"]
    parsed = {a.dest for a in train._actions}
    assert set(dests) <= parsed
