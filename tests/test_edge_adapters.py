"""The recipe's ``adapters`` option (train/edge_learner.py): adapters in the frozen tail on cached trunk outputs,
SAM/ASAM over them, and the merge that leaves a plain MobileNetV3Audio for export. Micro network, no data."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.train.cnn_adapters import has_cnn_adapters, merge_cnn_adapters
from stethoedge.train.edge_learner import EdgeRecipe, Tail, adapt_tail, assemble, make_optimizer
from stethoedge.train.efficientat import MNConfig, MobileNetV3Audio
from stethoedge.train.sam import SAM

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TUNE_FROM = 11


def _setup(kind: str, **kw) -> tuple[MobileNetV3Audio, Tail, EdgeRecipe, torch.Tensor]:
    torch.manual_seed(0)
    model = MobileNetV3Audio(MNConfig(width_mult=0.1, n_frames=64, n_mels=32, head_hidden=256)).eval()
    recipe = EdgeRecipe(out="unused", weights="unused", tune_from=TUNE_FROM, adapters=kind, **kw)
    with torch.no_grad():
        h = model.features[:TUNE_FROM](model.to_image(torch.randn(8, 64, 32)))  # what the trunk cache holds
    return model, Tail(model, TUNE_FROM), recipe, h


def test_default_recipe_has_no_adapters():
    assert EdgeRecipe(out="o", weights="w").adapters == "none"


@pytest.mark.parametrize("kind,optimizer", [("lora", "sam"), ("bottleneck", "asam"), ("lora", "adamw")])
def test_adapters_train_in_the_tail_and_merge_for_export(kind, optimizer):
    model, tail, r, h = _setup(kind, optimizer=optimizer)
    with torch.no_grad():
        before = tail.eval()(h)
    adapt_tail(tail, r)
    with torch.no_grad():
        assert float((tail(h) - before).abs().max()) <= 1e-6, "zero-initialised adapters: the pretrained tail"
    trainable = {k for k, p in tail.named_parameters() if p.requires_grad}
    assert trainable and all(k.startswith("classifier.") or any(t in k for t in ("lora_", ".down.", ".up."))
                             for k in trainable)
    opt, base = make_optimizer(r, tail)
    assert isinstance(opt, SAM) == (optimizer != "adamw")
    assert [g["lr"] for g in base.param_groups] == [r.lr, r.tail_lr, r.adapter_lr]
    y = torch.arange(8) % 4
    frozen = {k: v.clone() for k, v in tail.state_dict().items() if not any(t in k for t in ("lora_", ".down.", ".up.",
                                                                                              "classifier."))}
    for _ in range(3):
        tail.train()
        torch.nn.functional.cross_entropy(tail(h), y).backward()
        if isinstance(opt, SAM):
            opt.first_step()
            torch.nn.functional.cross_entropy(tail(h), y).backward()
            opt.second_step()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
    for k, v in frozen.items():  # tail weights and BatchNorm statistics stay the pretrained ones
        torch.testing.assert_close(tail.state_dict()[k], v, rtol=0, atol=0)
    tail.eval()
    with torch.no_grad():
        adapted = tail.pooled(h)
        assert float((adapted - Tail(model, TUNE_FROM).eval().pooled(h)).abs().max()) > 0, "the adapters trained"
        merge_cnn_adapters(tail)
        shipped = assemble(model, tail, TUNE_FROM)
        assert not has_cnn_adapters(shipped)
        assert set(shipped.state_dict()) == set(MobileNetV3Audio(model.cfg).state_dict())
        assert float((shipped.features[TUNE_FROM:](h).mean(dim=(2, 3)) - adapted).abs().max()) <= 1e-4


def test_unknown_adapter_kind_is_a_data_error():
    _, tail, _, _ = _setup("lora")
    with pytest.raises(DataError, match="not none, lora or bottleneck"):
        adapt_tail(tail, EdgeRecipe(out="o", weights="w", adapters="prefix"))


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPR, ICBHI = SHARED / "data" / "sprsound", SHARED / "data" / "icbhi_train16k"


@pytest.mark.skipif(not (SPR.is_dir() and ICBHI.is_dir()),
                    reason=f"real data not found at {SPR} and {ICBHI} (../shared beside the repository)")
def test_recipe_with_adapters_writes_a_plain_network(tmp_path):
    """One short epoch of the real recipe on a few windows (random AudioSet-shaped weights): adapters train,
    the run's checkpoint is a plain MobileNetV3Audio."""
    from stethoedge.train.checkpoint import load_checkpoint
    from stethoedge.train.edge_learner import run_recipe

    torch.manual_seed(0)
    weights = tmp_path / "mn04.pt"
    torch.save(MobileNetV3Audio(MNConfig(n_classes=527)).state_dict(), weights)
    r = EdgeRecipe(out=str(tmp_path / "run"), weights=str(weights), sprsound=str(SPR), icbhi=str(ICBHI),
                   cache_dir=str(tmp_path / "cache"), max_per_source=4, views=0, epochs=1, samples_per_epoch=16,
                   batch_size=8, threads=1, adapters="lora")
    metrics = run_recipe(r)
    assert metrics["recipe"]["adapters"] == "lora"
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert any("lora_b" in k for k in state["tail"]), "the tail trained with adapters"
    ckpt = load_checkpoint(tmp_path / "run")
    assert isinstance(ckpt.model, MobileNetV3Audio) and not has_cnn_adapters(ckpt.model)
