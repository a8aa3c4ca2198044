"""`stethoedge train`: recipes, flag overrides, re-running a run's config.json, errors as one line."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from stethoedge.cli import build_parser, main
from stethoedge.cli_train import build_run_config, build_train_config
from stethoedge.runtime.errors import DataError
from stethoedge.train.run_config import RunConfig
from stethoedge.train.trainer import TrainConfig

ALL_RECIPES = sorted((Path(__file__).resolve().parents[1] / "train" / "recipes").glob("*.toml"))
#: Recipes of `stethoedge train-edge` (EdgeRecipe); the others are `stethoedge train` (RunConfig) recipes.
EDGE_RECIPES = [p for p in ALL_RECIPES if p.stem == "real-edge"]
RECIPES = [p for p in ALL_RECIPES if p not in EDGE_RECIPES]


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_is_a_valid_train_config(recipe: Path):
    cfg = build_run_config(_args(["--config", str(recipe), "--data", "D", "--out", "O"]))
    assert isinstance(cfg, RunConfig) and cfg.data.root == "D"
    assert build_train_config is build_run_config  # the first version's name


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
    cfg = build_run_config(_args(["--config", str(recipe), "--data", "D", "--out", "O", "--epochs", "3",
                                  "--optimizer", "adamw", "--synthetic", "S1", "--synthetic", "S2", "--aft",
                                  "--labels", "normal,abnormal", "--no-resume"]))
    assert (cfg.epochs, cfg.optim.optimizer, cfg.model.depth, cfg.model.tstride) == (3, "adamw", 6, 16)
    assert cfg.data.synthetic == ["S1", "S2"] and cfg.aft.enabled and cfg.aft.weight == 0.2
    assert cfg.labels == ("normal", "abnormal") and cfg.resume is False and cfg.data.weighted_sampler is True
    assert cfg.optim.rho == 0.5 and cfg.distill.temperature == 4.0  # from the recipe


def test_nested_recipe_tables_and_flat_keys_mix(tmp_path: Path):
    recipe = tmp_path / "nested.toml"
    recipe.write_text('epochs = 2\nlr = 0.01\n[data]\nlabels = ["a", "b", "c"]\n[optim]\nrho = 0.2\n')
    cfg = build_run_config(_args(["--config", str(recipe), "--data", "D", "--out", "O", "--lr", "0.02"]))
    assert (cfg.epochs, cfg.optim.lr, cfg.optim.rho, cfg.labels) == (2, 0.02, 0.2, ("a", "b", "c"))
    recipe.write_text('[optim]\nlearning_rate = 3\n')
    with pytest.raises(DataError, match=r"unknown training option\(s\): optim.learning_rate"):
        build_run_config(_args(["--config", str(recipe), "--data", "D", "--out", "O"]))


def test_runconfig_round_trips_and_reads_the_flat_layout():
    cfg = RunConfig.from_any({"data": "D", "out": "O", "lr": 0.01, "adapter": "lora", "distill_from": "T", "aft": True,
                               "synthetic": ["S"]})
    assert (cfg.data.root, cfg.optim.lr, cfg.adapter.kind, cfg.distill.teacher, cfg.aft.enabled) == \
        ("D", 0.01, "lora", "T", True)
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    flat = TrainConfig(data="D", out="O", lr=0.01, adapter="lora", distill_from="T", aft=True, synthetic=["S"])
    assert flat.to_run_config() == cfg and RunConfig.coerce(flat) == cfg
    assert cfg.flat() == {**TrainConfig(data="D", out="O").__dict__, "lr": 0.01, "adapter": "lora", "distill_from": "T",
                          "aft": True, "synthetic": ["S"]}  # state.pt's resume key keeps its first-version keys
    for bad, message in [({"data": {"labelz": []}}, "data.labelz"), ({"nonsense": 1}, "nonsense"),
                         ({"data": {"labels": ["a"]}}, "at least two"),
                         ({"data": {"labels": ["a", "a"]}}, "must be unique"),
                         ({"data": {"labels": ["a", " b"]}}, "without leading or trailing spaces"),
                         ({"data": {"synthetic": 5}}, "data.synthetic must be a dataset path"),
                         ({"optim": 3}, "must be a table")]:
        with pytest.raises(DataError, match=message):
            RunConfig.from_any(bad)


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
    assert saved["run"]["optim"]["optimizer"] == "asam" and saved["model"]["depth"] == 1
    assert saved["labels"] == saved["run"]["data"]["labels"] == ["normal", "crackle", "wheeze", "both"]
    again = build_run_config(_args(["--config", str(run / "config.json"), "--out", str(tmp_path / "again")]))
    assert again == RunConfig.from_dict({**saved["run"], "out": str(tmp_path / "again")})
    # a config.json of the first version (flat "train" table) still re-runs
    old = tmp_path / "old-config.json"
    old.write_text(json.dumps({"train": {**again.flat(), "out": "X"}, "model": saved["model"]}))
    assert build_run_config(_args(["--config", str(old), "--out", str(tmp_path / "again")])) == again
