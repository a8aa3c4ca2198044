"""Adapters for the EfficientAT MobileNet (train/cnn_adapters.py): identity at start, what trains, training
moves the function, merge into a plain MobileNetV3Audio, delta files, and the real mn04 weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.train.cnn_adapters import (CNNAdapterConfig, ConvBottleneck, ConvLoRA, add_cnn_adapters,
                                           apply_cnn_delta, cnn_backbone_fingerprint, has_cnn_adapters,
                                           merge_cnn_adapters, save_cnn_delta, train_mode)
from stethoedge.train.efficientat import MNConfig, MobileNetV3Audio, load_efficientat
from stethoedge.train.model import count_parameters

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MN04_AS = SHARED / "weights" / "efficientat_mn04_as.pt"
MICRO = MNConfig(width_mult=0.1, n_classes=4, n_frames=64, n_mels=32, head_hidden=256)
KINDS = ["lora", "bottleneck"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _backbone(seed: int = 0) -> MobileNetV3Audio:
    """A micro MobileNet with non-trivial BatchNorm statistics (as a pretrained one has)."""
    torch.manual_seed(seed)
    model = MobileNetV3Audio(MICRO)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def _cfg(kind: str, **kw) -> CNNAdapterConfig:
    return CNNAdapterConfig(kind=kind, from_block=9, rank=4, reduction=2, **kw)


def _perturb(model: torch.nn.Module) -> None:
    """Give the zero-initialised branches non-zero weights, as training would."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and not name.startswith("classifier."):
                p.add_(torch.randn_like(p) * 0.2)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_init_adapters_leave_the_pretrained_function_unchanged(kind):
    model = _backbone()
    x = torch.randn(3, 64, 32)
    with torch.no_grad():
        before = model(x)
        add_cnn_adapters(model, _cfg(kind))
        after = model(x)
    assert has_cnn_adapters(model)
    assert float((after - before).abs().max()) <= 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_only_adapters_and_head_train(kind):
    model = add_cnn_adapters(_backbone(), _cfg(kind))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if not n.startswith("classifier.")}
    assert adapters and all(any(t in n for t in ("lora_a", "lora_b", ".down.", ".up.")) for n in adapters)
    assert all(int(n.split(".")[1]) >= 9 for n in adapters), "only blocks from from_block on are adapted"
    assert {n for n in trainable if n.startswith("classifier.")} == {n for n, _ in model.classifier.named_parameters(
        prefix="classifier")}
    with_bn = add_cnn_adapters(_backbone(), _cfg(kind, train_bn=True, train_head=False))
    names = {n for n, p in with_bn.named_parameters() if p.requires_grad}
    assert not any(n.startswith("classifier.") for n in names)
    assert any(n.endswith("1.weight") and int(n.split(".")[1]) >= 9 for n in names), "BatchNorm affine trains"


@pytest.mark.parametrize("kind", KINDS)
def test_training_steps_reduce_the_loss_and_keep_the_backbone(kind):
    model = add_cnn_adapters(_backbone(), _cfg(kind))
    frozen = {k: v.clone() for k, v in model.state_dict().items()
              if not any(t in k for t in ("lora_", ".down.", ".up.", "classifier."))}
    torch.manual_seed(1)
    x, y = torch.randn(8, 64, 32), torch.randint(0, 4, (8,))
    with torch.no_grad():
        out0 = model(x)
        loss0 = float(torch.nn.functional.cross_entropy(out0, y))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(6):
        train_mode(model)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out1 = model(x)
        loss1 = float(torch.nn.functional.cross_entropy(out1, y))
    assert loss1 < loss0, (loss0, loss1)
    assert not torch.allclose(out0, out1, atol=1e-4)
    adapters_moved = [n for n, p in model.named_parameters() if ("lora_b" in n or ".up." in n) and p.abs().sum() > 0]
    assert adapters_moved, "the zero-initialised branches trained"
    for k, v in frozen.items():  # weights and BatchNorm statistics of the backbone did not move
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_merge_gives_a_plain_mobilenet_with_the_same_outputs(kind):
    model = add_cnn_adapters(_backbone(), _cfg(kind))
    _perturb(model)
    x = torch.randn(4, 64, 32)
    with torch.no_grad():  # embeddings: the random micro head (std 0.01) would hide differences in logits
        base = _backbone().embed(x)
        unmerged, unmerged_logits = model.embed(x), model(x)
        merge_cnn_adapters(model)
        merged, merged_logits = model.eval().embed(x), model(x)
    assert not has_cnn_adapters(model)
    assert not any(isinstance(m, (ConvLoRA, ConvBottleneck)) for m in model.modules())
    assert set(model.state_dict()) == set(MobileNetV3Audio(MICRO).state_dict()), "merged model is a plain mn"
    assert all(p.requires_grad for p in model.parameters())
    assert float((merged - unmerged).abs().max()) <= 1e-4
    assert float((merged_logits - unmerged_logits).abs().max()) <= 1e-4
    assert float((unmerged - base).abs().max()) > 1e-2, "the perturbed adapters changed the function"
    reloaded = MobileNetV3Audio(MICRO).eval()
    reloaded.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert float((reloaded.embed(x) - unmerged).abs().max()) <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_delta_round_trip_and_wrong_backbone(kind, tmp_path):
    backbone = _backbone()
    fingerprint = cnn_backbone_fingerprint(backbone)
    cfg = _cfg(kind, train_bn=True)
    tuned = add_cnn_adapters(backbone, cfg)
    assert cnn_backbone_fingerprint(tuned) == fingerprint, "adapters do not change the fingerprint"
    _perturb(tuned)
    save_cnn_delta(tmp_path / "delta.pt", tuned, cfg, fingerprint)
    fresh = _backbone()
    with torch.no_grad():
        fresh.classifier[5].weight.normal_()  # a new task's head is re-initialised: the delta brings the trained one
    apply_cnn_delta(fresh, tmp_path / "delta.pt")
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), tuned.eval()(x))
    payload = torch.load(tmp_path / "delta.pt")
    assert payload["adapter"]["kind"] == kind and payload["architecture"] == "efficientat-mn"
    assert sum(v.numel() for v in payload["state_dict"].values()) < count_parameters(MobileNetV3Audio(MICRO))
    with pytest.raises(DataError, match="another backbone"):
        apply_cnn_delta(_backbone(seed=5), tmp_path / "delta.pt")
    torch.save({"format": "stethoedge.adapter-delta"}, tmp_path / "ast.pt")
    with pytest.raises(DataError, match="not a stethoedge MobileNet adapter delta"):
        apply_cnn_delta(_backbone(), tmp_path / "ast.pt")


def test_bad_configs_are_value_errors():
    with pytest.raises(ValueError, match="unknown adapter kind"):
        add_cnn_adapters(_backbone(), CNNAdapterConfig(kind="prefix"))
    with pytest.raises(ValueError, match="conv-LoRA targets"):
        add_cnn_adapters(_backbone(), CNNAdapterConfig(kind="lora", lora_targets=("depthwise",)))
    with pytest.raises(ValueError, match="no inverted residual block"):
        add_cnn_adapters(_backbone(), CNNAdapterConfig(kind="lora", from_block=16))
    model = add_cnn_adapters(_backbone(), CNNAdapterConfig(kind="lora"))
    with pytest.raises(ValueError, match="already has adapters"):
        add_cnn_adapters(model, CNNAdapterConfig(kind="lora"))


def test_real_mn04_weights_adapt_and_merge():
    if not MN04_AS.is_file():
        pytest.skip(f"real EfficientAT weights not present: place efficientat_mn04_as.pt at {MN04_AS}")
    model, _ = load_efficientat(MN04_AS, MNConfig(n_classes=4))
    total = count_parameters(model)
    torch.manual_seed(0)
    x = torch.randn(1, 200, 128)
    with torch.no_grad():
        before = model(x)
    fingerprint = cnn_backbone_fingerprint(model)
    add_cnn_adapters(model, CNNAdapterConfig(kind="lora", from_block=11, rank=8))
    adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    head = sum(p.numel() for p in model.classifier.parameters())
    assert count_parameters(model, trainable_only=True) == adapters + head
    assert 0 < adapters < 0.05 * total, (adapters, total)
    print(f"mn04: {total} parameters, conv-LoRA r8 from block 11: {adapters} adapter + {head} head parameters")
    with torch.no_grad():
        assert float((model(x) - before).abs().max()) <= 1e-6
        _perturb(model)
        unmerged = model(x)
        merge_cnn_adapters(model)
        assert float((model(x) - unmerged).abs().max()) <= 1e-4
    assert cnn_backbone_fingerprint(load_efficientat(MN04_AS, MNConfig(n_classes=4))[0]) == fingerprint
