"""torchrun-style DDP on CPU with gloo: 2 processes, one SAM step, both ranks hold the same weights,
equal to one process stepping on the union of their batches."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from stethoedge.train import distributed
from stethoedge.train.model import AST, preset_config
from stethoedge.train.trainer import TrainConfig, Trainee, build_optimizer, make_loss, train_step

SHAPE = dict(n_frames=48, n_mels=32)


def _batch(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(4, 48, 32, generator=g), torch.randint(0, 4, (4,), generator=g), torch.zeros(4, dtype=torch.long)


def _fresh() -> tuple[Trainee, torch.optim.Optimizer, TrainConfig]:
    torch.manual_seed(0)
    trainee = Trainee(AST(preset_config("micro", **SHAPE)), None)
    cfg = TrainConfig(data="", out="", optimizer="sam", lr=1e-2)
    return trainee, build_optimizer(list(trainee.parameters()), cfg), cfg


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = distributed.init_from_env("cpu")
    try:
        trainee, opt, cfg = _fresh()
        wrapped = distributed.wrap(trainee, info)
        train_step(wrapped, _batch(rank), opt, make_loss(cfg, None), 1.0)
        diff = distributed.broadcast_max_param_diff(trainee)
        shard = distributed.shard(torch.arange(7), info).tolist()
        torch.save({"diff": diff, "state": trainee.state_dict(), "shard": shard}, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_agree_after_a_sam_step(tmp_path: Path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["diff"] == 0.0 and r1["diff"] == 0.0, "both ranks must hold identical weights"
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    # the same as one process stepping on both batches together (DDP averages the gradients)
    trainee, opt, cfg = _fresh()
    before = {k: v.clone() for k, v in trainee.state_dict().items()}
    both = [torch.cat(parts) for parts in zip(_batch(0), _batch(1))]
    train_step(trainee, tuple(both), opt, make_loss(cfg, None), 1.0)
    for key, value in trainee.state_dict().items():
        torch.testing.assert_close(r0["state"][key], value, atol=2e-5, rtol=1e-4)
    assert not torch.equal(before["model.head.1.weight"], r0["state"]["model.head.1.weight"])
    assert r0["shard"] == [0, 2, 4, 6] and r1["shard"] == [1, 3, 5, 0], "ranks split an epoch, same step count"
