"""EfficientAT MobileNetV3 ("mn" family) for log-mel input (Schmid, Koutini, Widmer, ICASSP 2023).

The network of the paper: MobileNetV3-Large's inverted residual stack (Howard et al., 2019) on a
one-channel (mels, frames) image, every channel count scaled by the width multiplier (mn04: 0.4)
and rounded to a multiple of 8, squeeze-excitation on the channel axis in the blocks that have it,
a 1x1 conv to 6x the last block's channels, global average pooling and an MLP head
(Linear -> Hardswish -> Dropout -> Linear). Module names follow the published checkpoints
(``features.N.block.K...``, ``classifier.2/5``) so that every tensor of an AudioSet file maps;
``load_efficientat`` checks that it does.

Input: (batch, frames, mels) as every stethoedge model takes it (the efficientat-mel FeatureSpec);
the model transposes to the (batch, 1, mels, frames) image the weights were trained on.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stethoedge.runtime.errors import DataError
from stethoedge.train.checkpoint import read_torch_file

log = logging.getLogger("stethoedge.train")

#: (in, kernel, expanded, out, squeeze-excitation, hardswish, stride) of MobileNetV3-Large before
#: the width multiplier (the paper's Table 1); EfficientAT keeps all four stride-2 stages.
LARGE_BLOCKS: tuple[tuple[int, int, int, int, bool, bool, int], ...] = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)

#: AudioSet class indices (ontology order of class_labels_indices.csv) used by the load check.
AUDIOSET_SPEECH, AUDIOSET_SPEECH_SYNTHESIZER, AUDIOSET_SINE_WAVE = 0, 7, 501
AUDIOSET_CLASSES = 527


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor``, never more than 10 % below it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class MNConfig:
    """Architecture of one EfficientAT MobileNet; stored in checkpoints and bundles."""

    width_mult: float = 0.4
    n_classes: int = 4
    n_frames: int = 798
    n_mels: int = 128
    head_hidden: int = 1280  # before the width multiplier (mn04: 512)
    dropout: float = 0.2
    head: str = "mlp"  # "mlp" (the published head) or "linear" (one layer on the pooled embedding: a probe)

    @property
    def last_conv_channels(self) -> int:
        """Channels of the final 1x1 conv = the pooled embedding size (mn04: 384)."""
        return 6 * make_divisible(LARGE_BLOCKS[-1][3] * self.width_mult)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm (eps 1e-3) -> activation: keys ``.0`` conv, ``.1`` norm."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel squeeze-excitation: mean over (freq, time) -> fc -> ReLU -> fc -> sigmoid -> scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = make_divisible(channels // 4)
        self.fc1, self.fc2 = nn.Linear(channels, squeeze), nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))
        return x * torch.sigmoid(s)[:, :, None, None]


class ChannelSE(nn.Module):
    """Holder matching the checkpoints' ``conc_se_layers.0`` (EfficientAT's channel-only SE)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (k x k, stride) -> [SE] -> project (1x1, linear) [+ input]."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hardswish: bool,
                 stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_bn_act(cin, expanded, 1, act=act))
        layers.append(conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(ChannelSE(expanded))
        layers.append(conv_bn_act(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class MobileNetV3Audio(nn.Module):
    """EfficientAT MobileNetV3 classifier on (batch, frames, mels) log-mel input."""

    def __init__(self, cfg: MNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width_mult
        first = make_divisible(LARGE_BLOCKS[0][0] * w)
        layers: list[nn.Module] = [conv_bn_act(1, first, 3, 2, act=nn.Hardswish)]
        for cin, k, exp, cout, se, hs, stride in LARGE_BLOCKS:
            layers.append(InvertedResidual(make_divisible(cin * w), k, make_divisible(exp * w),
                                           make_divisible(cout * w), se, hs, stride))
        last_in = make_divisible(LARGE_BLOCKS[-1][3] * w)
        layers.append(conv_bn_act(last_in, cfg.last_conv_channels, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        hidden = make_divisible(cfg.head_hidden * w)
        if cfg.head == "mlp":
            self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                            nn.Linear(cfg.last_conv_channels, hidden), nn.Hardswish(),
                                            nn.Dropout(cfg.dropout), nn.Linear(hidden, cfg.n_classes))
        elif cfg.head == "linear":
            self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                            nn.Linear(cfg.last_conv_channels, cfg.n_classes))
        else:
            raise ValueError(f"head {cfg.head!r} is not 'mlp' or 'linear'")
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @staticmethod
    def to_image(x: torch.Tensor) -> torch.Tensor:
        """(batch, frames, mels) -> (batch, 1, mels, frames)."""
        return x.transpose(1, 2).unsqueeze(1)

    def feature_maps(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Output of ``features[:upto]`` (all of them by default) for (batch, frames, mels) input."""
        return self.features[:upto](self.to_image(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding (batch, last_conv_channels): the network before its MLP head."""
        return self.feature_maps(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feature_maps(x))


def load_efficientat(path: str | os.PathLike, cfg: MNConfig = MNConfig()) -> tuple[MobileNetV3Audio, dict[str, Any]]:
    """Our MobileNet initialised from an EfficientAT state_dict file (e.g. ``efficientat_mn04_as.pt``).

    Every tensor of the model except the last head layer must come from the file and every tensor
    of the file must have a place in the model (else DataError); the last layer (``classifier.5``)
    is loaded when its class count matches ``cfg.n_classes`` and re-initialised otherwise.
    Returns the model (eval mode) and a report {mapped, head_reinitialised, source}.
    """
    path = Path(path)
    state = read_torch_file(path, missing="no such EfficientAT weights file", what="EfficientAT weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: not a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "features.0.0.weight" not in state:
        raise DataError(f"{path}: not an EfficientAT MobileNet state_dict (no features.0.0.weight)")
    stem = state["features.0.0.weight"].shape[0]
    if stem != make_divisible(LARGE_BLOCKS[0][0] * cfg.width_mult):
        raise DataError(f"{path}: first conv has {stem} channels; width multiplier {cfg.width_mult} needs "
                        f"{make_divisible(LARGE_BLOCKS[0][0] * cfg.width_mult)} (wrong --width-mult?)")
    model = MobileNetV3Audio(cfg)
    own = model.state_dict()
    unused = sorted(k for k in state if k not in own)
    if unused:
        raise DataError(f"{path}: {len(unused)} tensors have no place in mn{cfg.width_mult * 10:02.0f}: "
                        + ", ".join(unused[:8]))
    head = {k for k in own if k.startswith("classifier.5.")}
    reinit = sorted(k for k in head if k not in state or state[k].shape != own[k].shape)
    missing = sorted(k for k in own if k not in state and k not in head)
    if missing:
        raise DataError(f"{path}: {len(missing)} model tensors have no weights in the file (they would stay "
                        f"random): " + ", ".join(missing[:8]))
    for key in sorted(own):
        if key in state and key not in reinit and state[key].shape != own[key].shape:
            raise DataError(f"{path}: {key} has shape {tuple(state[key].shape)}, the model needs {tuple(own[key].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k not in reinit}, strict=False)
    model.eval()
    report = {"source": path.name, "mapped": len(own) - len(reinit), "file_tensors": len(state),
              "head_reinitialised": reinit}
    log.info("%s: %d of %d tensors mapped, head re-initialised: %s", path.name, report["mapped"], len(own), reinit)
    return model, report
