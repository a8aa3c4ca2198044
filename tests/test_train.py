"""Training side: metrics, SAM, sampler, model shapes and a real tiny training run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stethoedge.train.checkpoint import load_checkpoint
from stethoedge.train.metrics import confusion_matrix, evaluate, icbhi_scores, macro_f1
from stethoedge.train.model import AST, PRESETS, count_parameters, preset_config
from stethoedge.train.sam import SAM
from stethoedge.train.trainer import class_weights, cosine_with_warmup, make_loader


def test_icbhi_score_on_a_hand_computed_confusion_matrix():
    # rows = truth (normal, crackle, wheeze, both); columns = prediction
    cm = np.array([[40, 5, 3, 2], [4, 10, 1, 0], [2, 0, 6, 2], [1, 1, 1, 2]])
    s = icbhi_scores(cm)
    assert s["specificity"] == pytest.approx(40 / 50)
    assert s["sensitivity"] == pytest.approx((10 + 6 + 2) / 30)
    assert s["score"] == pytest.approx((40 / 50 + 18 / 30) / 2)
    f1 = [2 * 40 / (50 + 47), 2 * 10 / (15 + 16), 2 * 6 / (10 + 11), 2 * 2 / (5 + 6)]
    assert macro_f1(cm) == pytest.approx(np.mean(f1))


def test_evaluate_builds_the_matrix_and_binary_view():
    y = np.array([0, 0, 1, 2, 3, 3])
    p = np.array([0, 1, 1, 3, 3, 0])
    assert confusion_matrix(y, p).sum() == 6
    m = evaluate(y, p)
    assert m["specificity"] == 0.5 and m["sensitivity"] == pytest.approx(2 / 4)
    assert m["binary"]["sensitivity"] == pytest.approx(3 / 4)


def test_presets_shapes_and_sizes():
    assert count_parameters(AST(PRESETS["nano"])) == pytest.approx(0.51e6, rel=0.1)
    assert count_parameters(AST(PRESETS["tiny"])) == pytest.approx(5.5e6, rel=0.1)
    assert count_parameters(AST(PRESETS["small"])) == pytest.approx(22e6, rel=0.1)
    assert count_parameters(AST(PRESETS["base"])) == pytest.approx(87e6, rel=0.05)
    assert PRESETS["base"].fstride == PRESETS["base"].tstride == 10 and PRESETS["tiny"].tstride == 16
    model = AST(preset_config("micro"))
    assert model(torch.zeros(3, 798, 128)).shape == (3, 4)
    assert preset_config("micro").n_patches == 8 * 49


def test_sam_perturbs_then_restores_and_steps():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    loss_fn = torch.nn.CrossEntropyLoss()
    w0 = model.weight.detach().clone()
    loss_fn(model(x), y).backward()
    opt.first_step()
    assert not torch.equal(model.weight.detach(), w0), 'first_step must move to w + e(w)'
    loss_fn(model(x), y).backward()
    g_adv = model.weight.grad.detach().clone()
    opt.second_step()
    # the update used the gradient at the perturbed point, applied to the original weights
    torch.testing.assert_close(model.weight.detach(), w0 - 0.1 * g_adv)


def test_sam_perturbation_has_radius_rho():
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 3)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    model(torch.randn(8, 3)).square().mean().backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.first_step()
    with torch.no_grad():
        moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert float(moved) == pytest.approx(0.2, rel=1e-4)


def test_weighted_sampler_balances_classes():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 4 + [3] * 1)
    weights = class_weights(labels)
    assert weights[labels == 3][0] == pytest.approx(80 * weights[labels == 0][0])
    loader = make_loader(torch.zeros(100, 1), labels, batch_size=100, weighted=True, seed=0)
    drawn = np.concatenate([y.numpy() for _ in range(20) for _, y in loader])
    share = np.bincount(drawn, minlength=4) / drawn.size
    assert np.all(np.abs(share - 0.25) < 0.05), share


def test_cosine_schedule():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 100, 10) == pytest.approx(0.0, abs=1e-9)


def test_tiny_training_run_writes_a_complete_run(trained_run: Path):
    for name in ("config.json", "splits.json", "checkpoint.pt", "metrics.json"):
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["selected_on"].startswith("validation")
    assert len(metrics["history"]) == 2 and all(np.isfinite(h["train_loss"]) for h in metrics["history"])
    for split in ("val", "test"):
        assert 0.0 <= metrics[split]["score"] <= 1.0 and metrics[split]["n"] > 0
    splits = json.loads((trained_run / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"]) and not set(splits["train"]) & set(splits["val"])
    train_patients = {s.split("_")[0] for s in splits["train"]}
    assert not train_patients & {s.split("_")[0] for s in splits["val"]}, "validation must hold out whole patients"
    ckpt = load_checkpoint(trained_run)
    assert ckpt.spec.norm_mean != -4.2677393, "normalisation statistics come from the training set"
    assert ckpt.model(torch.zeros(1, 798, 128)).shape == (1, 4)


def test_auroc_against_hand_computed_examples():
    from stethoedge.train.metrics import auroc, auroc_report, summarize_seeds

    # positives score 0.9, 0.4; negatives 0.5, 0.1, 0.4: pairs won 1 + 1 + 1 + 0 + 1 + 0.5 (tie) of 6
    assert auroc(np.array([1, 1, 0, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1, 0.4])) == pytest.approx(4.5 / 6)
    assert np.isnan(auroc(np.array([1, 1]), np.array([0.2, 0.3])))
    y = np.array([0, 1, 2, 3])
    probs = np.eye(4) * 0.7 + 0.075
    report = auroc_report(y, probs)
    assert report["macro"] == pytest.approx(1.0) and report["binary"] == pytest.approx(1.0)
    m = evaluate(y, probs.argmax(1), probs)
    assert m["auroc"]["per_class"]["wheeze"] == pytest.approx(1.0) and m["per_class_recall"]["both"] == 1.0
    s = summarize_seeds([{"score": 0.5}, {"score": 0.7}, {"score": 0.6}])
    assert s["score"]["mean"] == pytest.approx(0.6) and s["score"]["sd"] == pytest.approx(0.1)


def test_legacy_checkpoint_keys_still_load():
    from stethoedge.train.model import upgrade_state_dict

    model = AST(preset_config("micro"))
    legacy = {k.replace("mlp.fc1.", "mlp.0.").replace("mlp.fc2.", "mlp.3.").replace("patch_embed.proj.", "patch_embed."): v
              for k, v in model.state_dict().items()}
    assert "blocks.0.mlp.0.weight" in legacy and "patch_embed.weight" in legacy
    AST(preset_config("micro")).load_state_dict(upgrade_state_dict(legacy))
