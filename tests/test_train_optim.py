"""Optimisation pieces: SAM/ASAM (flatness measured), GRL sign, distillation, EMA, AMP on CPU, sampler order."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stethoedge.train.distill import distillation_loss
from stethoedge.train.domain import DomainHead, grad_reverse
from stethoedge.train.ema import make_ema
from stethoedge.train.model import AST, preset_config
from stethoedge.train.sam import SAM
from stethoedge.train.trainer import TrainConfig, Trainee, build_optimizer, epoch_order, make_loss, train_step


@pytest.fixture
def one_thread():
    """Deterministic and fast small-tensor math on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _xor_problem() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g)
    return x, (x[:, 0] * x[:, 1] > 0).long()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 2))


def top_hessian_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 30) -> float:
    """Largest Hessian eigenvalue of the training loss by power iteration on Hessian-vector products."""
    params = list(model.parameters())
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params, create_graph=True)
    torch.manual_seed(1)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((a * a).sum() for a in v))
        v = [a / norm for a in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v)))
        v = [h.detach() for h in hv]
    return eig


def _fit(optimizer_name: str, rho: float) -> tuple[float, float]:
    x, y = _xor_problem()
    model = _mlp()
    if optimizer_name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    else:
        opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=optimizer_name == "asam", lr=0.5)
    for _ in range(300):
        nn.functional.cross_entropy(model(x), y).backward()
        if isinstance(opt, SAM):
            opt.first_step()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.second_step()
        else:
            opt.step()
            opt.zero_grad()
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model(x), y))
    return top_hessian_eigenvalue(model, x, y), loss


def test_sam_and_asam_reach_flatter_minima_than_sgd(one_thread):
    sharp_sgd, loss_sgd = _fit("sgd", 0.0)
    sharp_sam, loss_sam = _fit("sam", 0.2)
    sharp_asam, loss_asam = _fit("asam", 0.5)
    # all three fit the training set equally well; the SAM minima are measurably flatter
    assert max(loss_sam, loss_asam) < 1.5 * loss_sgd < 0.05
    assert sharp_sam < 0.9 * sharp_sgd, (sharp_sam, sharp_sgd)
    assert sharp_asam < 0.9 * sharp_sgd, (sharp_asam, sharp_sgd)


def test_asam_perturbation_is_scaled_by_weight_magnitude():
    w = nn.Parameter(torch.tensor([2.0, 0.5, -1.0]))
    opt = SAM([w], torch.optim.SGD, rho=0.1, adaptive=True, lr=0.1)
    (w * torch.tensor([1.0, 1.0, 1.0])).sum().backward()
    g = w.grad.clone()
    before = w.detach().clone()
    opt.first_step()
    expected = 0.1 * before**2 * g / torch.linalg.vector_norm(before.abs() * g)
    torch.testing.assert_close(w.detach() - before, expected)


def test_sam_state_dict_keeps_the_base_optimizer_moments():
    model = nn.Linear(3, 2)
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.first_step()
    model(torch.randn(4, 3)).sum().backward()
    opt.second_step()
    fresh = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=0.01)
    fresh.load_state_dict(opt.state_dict())
    moments = fresh.base_optimizer.state[model.weight]["exp_avg"]
    torch.testing.assert_close(moments, opt.base_optimizer.state[model.weight]["exp_avg"])
    assert fresh.param_groups is fresh.base_optimizer.param_groups and fresh.param_groups[0]["rho"] == 0.05


def test_gradient_reversal_flips_the_sign_and_scales():
    x = torch.randn(5, 3, requires_grad=True)
    (grad_reverse(x, 0.7) * 2.0).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -1.4))
    head = DomainHead(3)
    emb = torch.randn(4, 3, requires_grad=True)
    out = head(emb)
    assert out.shape == (4, 2)
    torch.testing.assert_close(grad_reverse(emb, 1.0), emb)


def test_aft_pushes_the_backbone_against_the_domain_head():
    """One step on the domain loss alone: the head gets better at it, the features get worse."""
    torch.manual_seed(0)
    feat = nn.Linear(4, 4)
    head = DomainHead(4, reverse_scale=1.0)
    x = torch.randn(32, 4)
    d = (torch.arange(32) % 2)
    x[d == 1] += 1.0
    loss = nn.functional.cross_entropy(head(feat(x)), d)
    loss.backward()
    g_feat = feat.weight.grad.clone()
    feat.weight.grad = None
    nn.functional.cross_entropy(head.net(feat(x)), d).backward()  # same loss without reversal
    torch.testing.assert_close(g_feat, -feat.weight.grad)


def test_distillation_loss_decreases_and_matches_definition(one_thread):
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    teacher_logits = x @ torch.randn(8, 4)  # a teacher the linear student can imitate
    labels = teacher_logits.argmax(1)
    student = nn.Linear(8, 4)
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    with torch.no_grad():
        kl_start = float(distillation_loss(student(x), teacher_logits, labels, temperature=2.0, alpha=1.0))
    losses = []
    for _ in range(300):
        loss = distillation_loss(student(x), teacher_logits, labels, temperature=2.0, alpha=0.7)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        kl_end = float(distillation_loss(student(x), teacher_logits, labels, temperature=2.0, alpha=1.0))
    assert losses[-1] < 0.6 * losses[0] and all(b <= a + 1e-4 for a, b in zip(losses[10:], losses[11:]))
    assert kl_end < 0.2 * kl_start, "the student moved towards the teacher's soft targets"
    s = torch.randn(3, 4)
    t = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    ps, pt = torch.softmax(s / 2, -1), torch.softmax(t / 2, -1)
    kl = (pt * (pt.log() - ps.log())).sum(-1).mean()
    expected = 0.3 * nn.functional.cross_entropy(s, y) + 0.7 * 4 * kl
    torch.testing.assert_close(distillation_loss(s, t, y, temperature=2.0, alpha=0.7), expected)


def test_ema_follows_the_weights():
    model = nn.Linear(2, 2)
    ema = make_ema(model, decay=0.9)
    ema.update_parameters(model)  # the first update copies the weights
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.weight, start + 0.1)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    labels = np.array([0] * 30 + [1] * 3)
    a = epoch_order(labels, True, seed=1, epoch=2)
    assert torch.equal(a, epoch_order(labels, True, 1, 2)) and not torch.equal(a, epoch_order(labels, True, 1, 3))
    assert sorted(epoch_order(labels, False, 1, 0).tolist()) == list(range(33))


@pytest.mark.parametrize("optimizer", ["adamw", "sam", "asam"])
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_train_step_with_amp_on_cpu(optimizer: str, amp: str, one_thread):
    torch.manual_seed(0)
    model = AST(preset_config("micro", n_frames=48, n_mels=32))
    trainee = Trainee(model, None)
    cfg = TrainConfig(data="", out="", optimizer=optimizer, amp=amp, lr=1e-2)
    opt = build_optimizer(list(trainee.parameters()), cfg)
    scaler = torch.amp.GradScaler("cpu") if amp == "fp16" else None
    x, y = torch.randn(4, 48, 32), torch.tensor([0, 1, 2, 3])
    before = model.head[1].weight.detach().clone()
    try:
        loss = train_step(trainee, (x, y, torch.zeros(4, dtype=torch.long)), opt, make_loss(cfg, None), 1.0, scaler)
    except RuntimeError as exc:  # fp16 kernels on CPU depend on the torch build
        if amp == "fp16":
            pytest.skip(f"fp16 autocast not supported by this CPU build of torch: {exc}")
        raise
    assert np.isfinite(loss)
    assert not torch.equal(model.head[1].weight, before), "the step changed the weights"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "master weights stay fp32"
