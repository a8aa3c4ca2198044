"""`stethoedge train`: recipes, flag overrides, re-running a run's config.json, errors as one line."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from stethoedge.cli import build_parser, main
from stethoedge.cli_train import build_train_config
from stethoedge.train.trainer import TrainConfig

ALL_RECIPES = sorted((Path(__file__).resolve().parents[1] / "train" / "recipes").glob("*.toml"))
#: Recipes of `stethoedge train-edge` (EdgeRecipe); the others are `stethoedge train` (TrainConfig) recipes.
EDGE_RECIPES = [p for p in ALL_RECIPES if p.stem == "real-edge"]
RECIPES = [p for p in ALL_RECIPES if p not in EDGE_RECIPES]


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_is_a_valid_train_config(recipe: Path):
    cfg = build_train_config(_args(["--config", str(recipe), "--data", "D", "--out", "O"]))
    assert isinstance(cfg, TrainConfig) and cfg.data == "D"


@pytest.mark.parametrize("recipe", EDGE_RECIPES, ids=lambda p: p.stem)
def test_every_edge_recipe_is_a_valid_edge_recipe(recipe: Path):
    from stethoedge.cli_train import load_config_file
    from stethoedge.train.edge_learner import EdgeRecipe

    cfg = EdgeRecipe.from_dict(load_config_file(str(recipe)) | {"out": "O"})
    assert cfg.weights.endswith("efficientat_mn04_as.pt") and cfg.optimizer in ("sam", "asam", "adamw")


def test_edge_recipes_exist():
    assert EDGE_RECIPES, "train/recipes/real-edge.toml (the shipped model's recipe) is missing"


def test_flags_override_the_recipe():
    recipe = next(p for p in RECIPES if p.stem == "edge-student")
    cfg = build_train_config(_args(["--config", str(recipe), "--data", "D", "--out", "O", "--epochs", "3",
                                    "--optimizer", "adamw", "--synthetic", "S1", "--synthetic", "S2", "--aft"]))
    assert (cfg.epochs, cfg.optimizer, cfg.depth, cfg.tstride) == (3, "adamw", 6, 16)
    assert cfg.synthetic == ["S1", "S2"] and cfg.aft and cfg.aft_lambda == 0.2


def test_unknown_recipe_key_and_missing_data_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture):
    bad = tmp_path / "bad.toml"
    bad.write_text('preset = "tiny"\nlearning_rate = 3\n')
    assert main(["train", "--config", str(bad), "--data", "D", "--out", "O"]) == 2
    assert "unknown training option(s): learning_rate" in capsys.readouterr().err
    assert main(["train", "--out", "O"]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_cli_train_with_recipe_prints_trainable_share_and_rerun_config(sim_data: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture):
    recipe = next(p for p in RECIPES if p.stem == "edge-student")
    run = tmp_path / "run"
    argv = ["train", "--config", str(recipe), "--data", str(sim_data), "--out", str(run), "--preset", "micro",
            "--depth", "1", "--epochs", "1", "--batch-size", "8", "--adapter", "bottleneck", "--adapter-reduction", "4",
            "--cache", str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trainable (" in out and "%)" in out and "Score" in out
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["optimizer"] == "asam" and saved["model"]["depth"] == 1
    again = build_train_config(_args(["--config", str(run / "config.json"), "--out", str(tmp_path / "again")]))
    assert {**again.__dict__, "out": None} == {**TrainConfig.from_dict(saved["train"]).__dict__, "out": None}
