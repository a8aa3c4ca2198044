"""benchmarks/exp_icbhi_cv.py's folds: every ICBHI official-train patient is held out exactly once, no patient
is in two roles of a fold, validation is carved from the other patients only, and nothing else moves."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from stethoedge.train.edge_learner import EdgeRecipe
from stethoedge.train.sources import ExampleTable


@pytest.fixture(scope="module")
def cv():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "exp_icbhi_cv.py"
    spec = importlib.util.spec_from_file_location("exp_icbhi_cv", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table() -> ExampleTable:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(21):  # ICBHI official-train patients, 1-9 cycles each, in the recipe's roles
        role = "eval" if p < 5 else "val" if p < 9 else "train"
        rows += [("icbhi", f"icbhi:{100 + p}", role)] * int(rng.integers(1, 10))
    rows += [("icbhi", "icbhi:900", "test-icbhi")] * 3
    rows += [("sprsound", f"spr:{p}", r) for p, r in enumerate(["train"] * 6 + ["val"] * 2 + ["test-inter"] * 2)]
    n = len(rows)
    source, patient, role = (np.array([r[i] for r in rows]) for i in range(3))
    return ExampleTable(label=rng.integers(0, 4, n), role=role, source=source, device=np.array(["d"] * n),
                        patient=patient, recording=patient, event_type=np.array([""] * n),
                        features=np.zeros((n, 1, 1), np.float16))


def test_each_icbhi_patient_is_held_out_once_and_roles_never_share_a_patient(cv):
    table = _table()
    data = SimpleNamespace(table=table)
    r = EdgeRecipe(out="o", weights="w")
    mine = (table.source == "icbhi") & np.isin(table.role, ("train", "val", "eval"))
    folds = cv.icbhi_folds(table.patient[mine].tolist(), 5, seed=0)
    assert sorted(p for f in folds for p in f) == sorted(set(table.patient[mine].tolist()))  # each exactly once
    assert {len(f) for f in folds} <= {4, 5}
    for k, fold in enumerate(folds):
        role = cv.fold_roles(data, fold, r, seed=k)
        assert (role[~mine] == table.role[~mine]).all()  # SPRSound and the official-test recordings do not move
        by_role = {x: set(table.patient[mine & (role == x)].tolist()) for x in ("train", "val", "eval")}
        assert by_role["eval"] == set(fold)
        assert not (by_role["eval"] & by_role["val"] or by_role["eval"] & by_role["train"]
                    or by_role["val"] & by_role["train"])
        rest = 21 - len(fold)  # validation: the recipe's share of the remaining patients (0.2 / 0.75 of them)
        assert len(by_role["val"]) == round(r.val_fraction / (1 - r.icbhi_eval_fraction) * rest)
    with pytest.raises(SystemExit, match="not a recipe key"):
        cv.recipe_from(SimpleNamespace(recipe=str(Path(__file__).resolve().parents[1] / "train/recipes/real-edge.toml"),
                                       cache_dir="c", out="o", set=["learning_rate=1"]))
