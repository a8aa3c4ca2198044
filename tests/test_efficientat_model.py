"""EfficientAT MobileNetV3 (train/efficientat.py): architecture numbers, the weights loader on checkpoints
made here, and the real AudioSet mn04 weights on speech and a sine wave."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from stethoedge.runtime.audio_io import load_audio
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import efficientat_spec
from stethoedge.runtime.features import compute_features
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.train.efficientat import (AUDIOSET_SINE_WAVE, AUDIOSET_SPEECH, AUDIOSET_SPEECH_SYNTHESIZER,
                                          MNConfig, MobileNetV3Audio, load_efficientat, make_divisible)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MN04_AS = SHARED / "weights" / "efficientat_mn04_as.pt"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def audioset_state() -> dict[str, torch.Tensor]:
    """A freshly initialised mn04 with the 527-class AudioSet head, as a state_dict."""
    torch.manual_seed(0)
    return MobileNetV3Audio(MNConfig(n_classes=527)).state_dict()


# ----------------------------------------------------------------------------------- architecture


def test_constants_and_make_divisible():
    assert (AUDIOSET_SPEECH, AUDIOSET_SPEECH_SYNTHESIZER, AUDIOSET_SINE_WAVE) == (0, 7, 501)
    assert make_divisible(16 * 0.4) == 8  # never below the divisor
    assert make_divisible(3) == 8
    assert make_divisible(64 * 0.4) == 24  # 25.6 -> 24 (within 10 %)
    assert make_divisible(160 * 0.4) == 64
    assert make_divisible(1280 * 0.4) == 512
    assert make_divisible(20, 16) == 32  # 16 would be more than 10 % below 20
    assert MNConfig().last_conv_channels == 384 and MNConfig(width_mult=1.0).last_conv_channels == 960


def test_forward_and_embed_shapes():
    torch.manual_seed(0)
    model = MobileNetV3Audio(MNConfig()).eval()
    x = torch.randn(2, 798, 128)
    with torch.no_grad():
        logits, emb = model(x), model.embed(x)
    assert logits.shape == (2, 4) and emb.shape == (2, 384)
    assert torch.isfinite(logits).all() and torch.isfinite(emb).all()
    # the embedding is what the head pools: the head applied to it gives the logits
    with torch.no_grad():
        np.testing.assert_allclose(model.classifier[2:](emb).numpy(), logits.numpy(), atol=1e-5)


def test_mn04_audioset_parameter_count(audioset_state):
    # the README of ../shared/weights: 312 tensors holding 993,485 numbers (BatchNorm statistics included)
    assert len(audioset_state) == 312
    assert sum(v.numel() for v in audioset_state.values()) == 993_485


# ----------------------------------------------------------------------------------------- loader


def test_loader_maps_everything_and_reinitialises_a_new_head(audioset_state, tmp_path):
    path = _save(audioset_state, tmp_path / "mn04.pt")
    model, report = load_efficientat(path, MNConfig(n_classes=4))
    assert report["head_reinitialised"] == ["classifier.5.bias", "classifier.5.weight"]
    assert report["mapped"] == 310 and report["file_tensors"] == 312 and report["source"] == "mn04.pt"
    assert not model.training
    own = model.state_dict()
    assert own["classifier.5.weight"].shape == (4, 512) and own["classifier.5.bias"].shape == (4,)
    for key, value in own.items():
        if not key.startswith("classifier.5."):
            assert torch.equal(value, audioset_state[key]), key


def test_loader_keeps_a_matching_head_and_accepts_wrapped_files(audioset_state, tmp_path):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in audioset_state.items()}}
    model, report = load_efficientat(_save(wrapped, tmp_path / "wrapped.pt"), MNConfig(n_classes=527))
    assert report["head_reinitialised"] == [] and report["mapped"] == 312
    assert all(torch.equal(v, audioset_state[k]) for k, v in model.state_dict().items())


def test_loader_names_a_missing_tensor(audioset_state, tmp_path):
    state = dict(audioset_state)
    del state["features.5.block.2.conc_se_layers.0.fc1.weight"]
    with pytest.raises(DataError, match=r"features\.5\.block\.2\.conc_se_layers\.0\.fc1\.weight"):
        load_efficientat(_save(state, tmp_path / "missing.pt"), MNConfig(n_classes=527))


def test_loader_rejects_an_unknown_tensor(audioset_state, tmp_path):
    state = {**audioset_state, "features.99.mystery": torch.zeros(3)}
    with pytest.raises(DataError, match=r"no place.*features\.99\.mystery"):
        load_efficientat(_save(state, tmp_path / "extra.pt"), MNConfig(n_classes=527))


def test_loader_rejects_a_wrong_width(tmp_path):
    path = _save(MobileNetV3Audio(MNConfig(width_mult=1.0, n_classes=527)).state_dict(), tmp_path / "mn10.pt")
    with pytest.raises(DataError, match=r"16 channels; width multiplier 0\.4 needs 8 \(wrong --width-mult\?\)"):
        load_efficientat(path, MNConfig(width_mult=0.4))


def test_loader_rejects_a_wrong_shape_inside(audioset_state, tmp_path):
    state = dict(audioset_state)
    state["features.3.block.0.0.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(DataError, match=r"features\.3\.block\.0\.0\.weight has shape \(1, 1, 1, 1\)"):
        load_efficientat(_save(state, tmp_path / "shape.pt"), MNConfig(n_classes=527))


def test_loader_garbage_and_missing_files_are_data_errors(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file\x00\x01\x02" * 10)
    with pytest.raises(DataError, match="unreadable EfficientAT weights file"):
        load_efficientat(garbage)
    with pytest.raises(DataError, match="no such EfficientAT weights file"):
        load_efficientat(tmp_path / "absent.pt")
    with pytest.raises(DataError, match="not a state_dict of tensors"):
        load_efficientat(_save({"a": 1}, tmp_path / "ints.pt"))
    with pytest.raises(DataError, match="not an EfficientAT MobileNet"):
        load_efficientat(_save({"layer.weight": torch.zeros(2)}, tmp_path / "other.pt"))


# ------------------------------------------------------------------------------ real AudioSet mn04


@pytest.fixture(scope="module")
def mn04_as():
    if not MN04_AS.is_file():
        pytest.skip(f"real EfficientAT weights not present: place efficientat_mn04_as.pt at {MN04_AS}")
    return load_efficientat(MN04_AS, MNConfig(n_classes=527))


def _top(model: MobileNetV3Audio, audio_16k: np.ndarray, k: int) -> list[int]:
    spec = efficientat_spec()
    x = torch.from_numpy(compute_features(cyclic_pad(audio_16k, spec.window_samples), spec))[None]
    with torch.no_grad():
        return torch.topk(model(x)[0], k).indices.tolist()


def test_audioset_weights_map_completely(mn04_as):
    model, report = mn04_as
    assert report["mapped"] == 312 and report["file_tensors"] == 312 and report["head_reinitialised"] == []
    assert model.state_dict()["classifier.5.weight"].shape == (527, 512)


def test_audioset_weights_hear_speech(mn04_as, tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "The quick brown fox jumps over the lazy dog, "
                    "and then it keeps on talking for a while."], check=True, capture_output=True, timeout=60)
    audio = load_audio(wav, 16000).samples  # espeak-ng writes 22.05 kHz
    top3 = _top(mn04_as[0], audio, 3)
    assert AUDIOSET_SPEECH in top3 or AUDIOSET_SPEECH_SYNTHESIZER in top3, top3


def test_audioset_weights_hear_a_sine_wave(mn04_as):
    t = np.arange(efficientat_spec().window_samples) / 16000.0
    top5 = _top(mn04_as[0], (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32), 5)
    assert AUDIOSET_SINE_WAVE in top5, top5
