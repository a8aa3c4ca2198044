"""Cross-architecture distillation (train/cross_distill.py): an AST teacher on its Kaldi fbank teaches an mn04
student on its efficientat-mel, and the other way round, from the same raw audio windows (1 s, micro models)."""
from __future__ import annotations

import pytest
import torch

from stethoedge.runtime.feature_spec import FeatureSpec, efficientat_spec
from stethoedge.train.cnn_adapters import CNNAdapterConfig, add_cnn_adapters, train_mode
from stethoedge.train.cross_distill import AudioModel, DistillSettings, check_pair, distill, distill_step, soft_kl
from stethoedge.train.efficientat import MNConfig, MobileNetV3Audio
from stethoedge.train.model import AST, preset_config
from stethoedge.train.sam import SAM

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SECONDS = 1.0
AST_SPEC = FeatureSpec(window_seconds=SECONDS)
MN_SPEC = efficientat_spec(window_seconds=SECONDS)
SETTINGS = DistillSettings(temperature=2.0, alpha=1.0)  # the soft term only: the KL to the teacher is the loss


def _audio(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise windows with a class-dependent tone (a stand-in for real cycles)."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 4
    t = torch.arange(AST_SPEC.window_samples) / AST_SPEC.sample_rate
    tones = torch.stack([torch.sin(2 * torch.pi * (150.0 + 250.0 * int(c)) * t) for c in labels])
    return 0.1 * torch.randn(n, len(t), generator=gen) + 0.3 * tones, labels


def _ast() -> AST:
    torch.manual_seed(0)
    return AST(preset_config("micro", n_frames=AST_SPEC.num_frames, n_mels=128))


def _mn() -> MobileNetV3Audio:
    """A micro MobileNet whose BatchNorm statistics are those of the test audio (as a pretrained net's are of
    its data; with the default mean 0 / var 1 the activations of a random one vanish in eval mode)."""
    torch.manual_seed(0)
    model = MobileNetV3Audio(MNConfig(width_mult=0.1, n_classes=4, n_frames=MN_SPEC.num_frames, head_hidden=256))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration pass
            m.reset_running_stats()
    with torch.no_grad():
        model.train()(AudioModel(model, MN_SPEC).features(_audio()[0]))
    return model.eval()


def _confident(model: torch.nn.Module, gain: float) -> torch.nn.Module:
    """A random teacher with outputs far from uniform (unit-variance head layers, the last scaled by ``gain``)."""
    with torch.no_grad():
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-2:]
        for lin in linears:
            torch.nn.init.normal_(lin.weight, 0.0, lin.in_features ** -0.5)
        linears[-1].weight.mul_(gain)
    return model


def _kl(student: AudioModel, teacher: AudioModel, audio: torch.Tensor) -> float:
    student.eval()
    with torch.no_grad():
        return float(soft_kl(student(audio), teacher(audio), SETTINGS.temperature))


def _distill_and_check(student: AudioModel, teacher: AudioModel, audio: torch.Tensor, labels: torch.Tensor,
                       epochs: int, mode, what: str) -> list[dict[str, float]]:
    """``distill`` (batches of 8, AdamW 3e-3); the KL to the teacher on all windows must fall by at least 5 %."""
    kl0 = _kl(student, teacher, audio)
    history = distill(student, teacher, audio, labels, epochs=epochs, batch_size=8, lr=3e-3, settings=SETTINGS,
                      train_mode=mode)
    kl1 = _kl(student, teacher, audio)
    print(f"{what}: KL to the teacher (T={SETTINGS.temperature}) {kl0:.4f} -> {kl1:.4f}")
    assert kl1 < 0.95 * kl0, (kl0, kl1, history)
    return history


def _teacher_state(teacher: AudioModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in teacher.state_dict().items()}


@pytest.mark.parametrize("direction", ["ast->mn04", "mn04->ast"])
def test_student_moves_towards_the_teacher_and_the_teacher_stays(direction):
    audio, labels = _audio()
    if direction == "ast->mn04":
        teacher, student, mode = AudioModel(_confident(_ast(), 3.0), AST_SPEC), AudioModel(_mn(), MN_SPEC), train_mode
    else:
        teacher, student, mode = AudioModel(_confident(_mn(), 30.0), MN_SPEC), AudioModel(_ast(), AST_SPEC), None
    teacher.frozen()
    before_state = _teacher_state(teacher)
    with torch.no_grad():
        assert float(soft_kl(teacher(audio), torch.zeros(len(audio), 4), 1.0)) > 0.1, "the teacher is not uniform"
    history = _distill_and_check(student, teacher, audio, labels, 10, mode, direction)
    assert history[-1]["kl"] < history[0]["kl"]
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before_state[k], rtol=0, atol=0)


def test_sam_and_adapters_in_a_distillation_step():
    """An AST teacher into an mn04 student that trains only conv-LoRA + head, with ASAM's two passes."""
    audio, labels = _audio(8)
    teacher = AudioModel(_confident(_ast(), 3.0), AST_SPEC).frozen()
    mn = add_cnn_adapters(_mn().eval(), CNNAdapterConfig(kind="lora", from_block=9, rank=4))
    student = AudioModel(mn, MN_SPEC)
    frozen = {k: v.clone() for k, v in mn.state_dict().items() if "lora_" not in k and not k.startswith("classifier.")}
    opt = SAM([p for p in student.parameters() if p.requires_grad], torch.optim.AdamW, rho=0.05, adaptive=True, lr=3e-3)
    kl0 = _kl(student, teacher, audio)
    for _ in range(8):
        train_mode(mn)
        out = distill_step(student, teacher, audio, labels, opt, SETTINGS)
        assert set(out) == {"loss", "kl"}
    assert _kl(student, teacher, audio) < kl0
    for k, v in frozen.items():
        torch.testing.assert_close(mn.state_dict()[k], v, rtol=0, atol=0)


def test_mismatched_windows_and_classes_are_value_errors():
    student = AudioModel(_mn(), MN_SPEC)
    with pytest.raises(ValueError, match="same audio"):
        check_pair(student, AudioModel(_ast(), FeatureSpec(window_seconds=2.0)))
    teacher = AudioModel(AST(preset_config("micro", n_frames=AST_SPEC.num_frames, n_mels=128, n_classes=3)),
                         AST_SPEC).frozen()
    audio, labels = _audio(2)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="teacher has 3 classes, the student 4"):
        distill_step(student, teacher, audio, labels, opt)


def test_real_mn04_with_conv_lora_learns_from_an_ast_teacher():
    """The pretrained mn04 (AudioSet weights) as the student, only conv-LoRA + head training."""
    from pathlib import Path

    from stethoedge.train.efficientat import load_efficientat

    weights = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "efficientat_mn04_as.pt"
    if not weights.is_file():
        pytest.skip(f"real EfficientAT weights not present: place efficientat_mn04_as.pt at {weights}")
    mn, _ = load_efficientat(weights, MNConfig(n_classes=4, n_frames=MN_SPEC.num_frames))
    torch.manual_seed(0)  # the LoRA A matrices
    add_cnn_adapters(mn, CNNAdapterConfig(kind="lora", from_block=11, rank=8))
    student, teacher = AudioModel(mn, MN_SPEC), AudioModel(_confident(_ast(), 3.0), AST_SPEC).frozen()
    frozen = {k: v.clone() for k, v in mn.state_dict().items() if "lora_" not in k and not k.startswith("classifier.")}
    audio, labels = _audio(8)
    _distill_and_check(student, teacher, audio, labels, 6, train_mode, "real mn04 + conv-LoRA student")
    for k, v in frozen.items():
        torch.testing.assert_close(mn.state_dict()[k], v, rtol=0, atol=0)
