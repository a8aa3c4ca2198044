"""Decision smoothing across windows."""
from __future__ import annotations

import numpy as np
import pytest

from stethoedge.runtime.smoothing import DecisionSmoother, SmoothingConfig, parse_smoothing

LABELS = ["normal", "crackle", "wheeze", "both"]
N, C = [0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]


def test_mean_holds_the_label_through_one_flicker():
    s = DecisionSmoother(LABELS, SmoothingConfig("mean", 3))
    labels = [s.update(np.array(p))[0] for p in (N, N, C, N, N, C, C)]
    assert labels == ["normal", "normal", "normal", "normal", "normal", "normal", "crackle"]


def test_vote_and_ema_and_none():
    vote = DecisionSmoother(LABELS, SmoothingConfig("vote", 3))
    assert [vote.update(np.array(p))[0] for p in (N, C, C, N)] == ["normal", "crackle", "crackle", "crackle"]
    ema = DecisionSmoother(LABELS, SmoothingConfig("ema", 0.5))
    _, p = ema.update(np.array(N))
    _, p = ema.update(np.array(C))
    np.testing.assert_allclose(p, 0.5 * np.array(N) + 0.5 * np.array(C))
    none = DecisionSmoother(LABELS, SmoothingConfig("none", 1))
    assert [none.update(np.array(p))[0] for p in (N, C)] == ["normal", "crackle"]


def test_reset_forgets_history():
    s = DecisionSmoother(LABELS, SmoothingConfig("mean", 5))
    for _ in range(4):
        s.update(np.array(N))
    s.reset()
    assert s.update(np.array(C))[0] == "crackle"


@pytest.mark.parametrize("text,expected", [("none", ("none", 1)), ("mean:5", ("mean", 5)), ("ema:0.3", ("ema", 0.3)),
                                           ("vote", ("vote", 3))])
def test_parse(text, expected):
    c = parse_smoothing(text)
    assert (c.method, c.param) == expected


@pytest.mark.parametrize("text", ["median:3", "mean:0", "mean:2.5", "ema:2", "mean:x"])
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        parse_smoothing(text)
