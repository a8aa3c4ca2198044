"""Quality metrics of generated samples: Frechet distance, precision/recall, memorisation, TSTR, report files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.train.generative_eval import (ClassifierEmbedder, evaluate_generator, frechet_distance,
                                              memorisation_check, precision_recall, train_test_score, write_report)
from stethoedge.train.generators import MelSet, create


@pytest.fixture(scope="module")
def emb() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((200, 8))


def test_frechet_zero_for_identical_and_growing_with_shift(emb: np.ndarray) -> None:
    assert frechet_distance(emb, emb.copy()) < 1e-8
    values = [frechet_distance(emb, emb + s) for s in (0.5, 1.0, 2.0)]
    # A pure translation leaves the covariances equal: the distance is exactly ||shift||^2.
    assert np.allclose(values, [8 * 0.25, 8 * 1.0, 8 * 4.0], rtol=1e-6)
    wider = frechet_distance(emb, emb * 2.0)
    assert wider > 1.0
    with pytest.raises(DataError, match="same dim"):
        frechet_distance(emb, emb[:, :4])


def test_precision_recall_fidelity_and_coverage(emb: np.ndarray) -> None:
    other = np.random.default_rng(1).standard_normal((200, 8))
    p, r = precision_recall(emb, other)
    assert p > 0.8 and r > 0.8
    collapsed = np.zeros((50, 8)) + 0.01 * np.random.default_rng(2).standard_normal((50, 8))
    p, r = precision_recall(emb, collapsed)
    assert p > 0.9 and r < 0.2, "mode collapse: faithful but no coverage"
    p, r = precision_recall(emb, other + 20.0)
    assert p == 0.0 and r == 0.0


def test_memorisation_flags_a_copied_training_sample() -> None:
    rng = np.random.default_rng(3)
    train = rng.standard_normal((40, 16, 8))
    fresh = rng.standard_normal((10, 16, 8))
    generated = np.concatenate([fresh, train[7:8], train[12:13] + 1e-9])
    report = memorisation_check(generated, train)
    assert set(report.flagged.tolist()) == {10, 11}
    assert report.distances[10] == 0.0 and report.threshold > 0
    assert report.fraction == pytest.approx(2 / 12)


def test_train_on_synthetic_test_on_real_separates_good_from_useless() -> None:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(4, 16, 8, generator=g)
    spec = FeatureSpec(n_mels=8)

    def draw(n: int, shuffle: bool = False) -> MelSet:
        labels = torch.arange(n) % 4
        mels = means[labels] + 0.3 * torch.randn(n, 16, 8, generator=g)
        return MelSet(mels, labels[torch.randperm(n, generator=g)] if shuffle else labels, spec)

    real_test = draw(40)
    good = train_test_score(draw(40), real_test, epochs=15)
    useless = train_test_score(draw(40, shuffle=True), real_test, epochs=15)
    assert good["macro_f1"] > 0.9 and useless["macro_f1"] < good["macro_f1"] - 0.3


def test_classifier_embedder_uses_the_trained_model(trained_run: Path) -> None:
    embedder = ClassifierEmbedder(trained_run)
    spec = FeatureSpec(n_mels=16).with_normalization(-5.0, 3.0)
    mels = torch.randn(5, 32, 16)
    x = embedder.to_classifier_input(mels, spec)
    assert x.shape == (5, *embedder.spec.input_shape)
    e = embedder(mels, spec)
    assert e.shape == (5, embedder.model.cfg.dim) and np.isfinite(e).all()
    assert frechet_distance(e, e) < 1e-8


def test_evaluate_and_write_report(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % 4
    real = MelSet(torch.randn(4, 32, 16, generator=g)[labels] + 0.1 * torch.randn(24, 32, 16, generator=g), labels,
                  FeatureSpec(n_mels=16))
    gen = create("vae", n_mels=16, n_frames=32, width=1 / 16, latent=8, batch_size=8)
    gen.fit(real, classes=[1, 2], steps=3, progress=False)
    report = evaluate_generator(gen, real, real, n_per_class=6, tstr_epochs=2)
    assert [r["class"] for r in report["per_class"]] == ["crackle", "wheeze"]
    assert all(r["frechet"] >= 0 and 0 <= r["recall"] <= 1 for r in report["per_class"])
    assert "tstr" in report and "trtr" in report
    files = write_report(report, real, tmp_path / "eval")
    assert files["grid"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = files["table"].read_text()
    assert "| crackle |" in table and "train on synthetic, test on real" in table
    assert not list((tmp_path / "eval").glob(".*"))
