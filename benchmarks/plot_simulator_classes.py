"""Render docs/simulator_classes.png: one simulated cycle per class, waveform over log-mel spectrogram.

Usage: python benchmarks/plot_simulator_classes.py [--out docs/simulator_classes.png] [--seed 0]

The waveform panel shades inspiration (green) and expiration (grey), marks crackles (red
ticks) and wheezes (blue bars) from the simulator's ground-truth plan; the spectrogram is
runtime.features.log_mel_fbank, exactly what the model sees before normalisation.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from stethoedge.runtime.feature_spec import FeatureSpec  # noqa: E402
from stethoedge.runtime.features import kaldi_mel, log_mel_fbank  # noqa: E402
from stethoedge.runtime.labels import CLASSES  # noqa: E402
from stethoedge.train.simulator import CyclePlan, simulate_recording_detailed  # noqa: E402

#: A condition likely to produce each class, to find an example quickly.
SOURCE = {"normal": "healthy", "crackle": "pneumonia", "wheeze": "asthma", "both": "copd"}
MARGIN_S = 0.3


def find_example(label: int, seed: int, device: str) -> tuple[np.ndarray, CyclePlan, float]:
    """First simulated cycle with ``label``: (audio with 0.3 s context, its plan, audio start in s)."""
    for k in range(200):
        rec = simulate_recording_detailed(np.random.default_rng([seed, label, k]), SOURCE[CLASSES[label]],
                                          device, 20.0, location="Al")
        for c in rec.plans:
            if c.annotated and c.cycle.label == label:
                t0 = max(0.0, c.start_s - MARGIN_S)
                t1 = min(rec.audio.shape[0] / rec.sample_rate, c.end_s + MARGIN_S)
                a = rec.audio[int(t0 * rec.sample_rate): int(t1 * rec.sample_rate)]
                return a, c, t0
    raise RuntimeError(f"no {CLASSES[label]} cycle found")


def mel_ticks(spec: FeatureSpec, freqs: list[float]) -> tuple[list[float], list[str]]:
    """Mel-bin positions (fractional) of ``freqs`` Hz, for the y axis."""
    lo, hi = kaldi_mel(spec.low_freq_hz), kaldi_mel(spec.sample_rate / 2)
    pos = [(float(kaldi_mel(f)) - lo) / (hi - lo) * (spec.n_mels + 1) - 1 for f in freqs]
    return pos, [f"{f:g}" if f < 1000 else f"{f / 1000:g}k" for f in freqs]


def plot(out: Path, seed: int = 0, device: str = "Meditron") -> Path:
    """Draw the 2 x 4 figure and save it to ``out`` (PNG)."""
    spec = FeatureSpec()
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5), gridspec_kw={"height_ratios": [1, 2.2]})
    for label, name in enumerate(CLASSES):
        audio, c, t0 = find_example(label, seed, device)
        sr = spec.sample_rate
        t = t0 + np.arange(audio.shape[0]) / sr
        ax = axes[0, label]
        ax.axvspan(c.start_s, c.exp_start_s, color="tab:green", alpha=0.15, lw=0)
        ax.axvspan(c.exp_start_s, c.exp_end_s, color="0.6", alpha=0.2, lw=0)
        ax.plot(t, audio, lw=0.4, color="k")
        peak = float(np.max(np.abs(audio))) or 1.0
        for k in c.crackles:
            ax.plot([k.time_s] * 2, [0.8 * peak, peak], color="tab:red", lw=1)
        for w in c.wheezes:
            ax.plot([w.start_s, w.start_s + w.duration_s], [-0.9 * peak] * 2, color="tab:blue", lw=3)
        ax.set_xlim(t[0], t[-1])
        ax.set_yticks([])
        ax.set_title(f"{name}  ({len(c.crackles)} crackles, {len(c.wheezes)} wheezes)", fontsize=10)
        fb = log_mel_fbank(audio, spec)
        ax = axes[1, label]
        frame_t = t0 + (np.arange(fb.shape[0]) * spec.frame_shift + spec.frame_length / 2) / sr
        ax.imshow(fb.T, origin="lower", aspect="auto", cmap="magma", vmin=np.percentile(fb, 5),
                  vmax=np.percentile(fb, 99.8), extent=(frame_t[0], frame_t[-1], -0.5, spec.n_mels - 0.5))
        ax.set_xlabel("time (s)")
        pos, names = mel_ticks(spec, [100, 250, 500, 1000, 2000, 4000, 8000])
        ax.set_yticks(pos, names)
        if label == 0:
            ax.set_ylabel("frequency (Hz, mel scale)")
    fig.suptitle(f"stethoedge simulator, {device}, seed {seed}: green = inspiration, grey = expiration, "
                 "red = crackles, blue = wheezes", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90)
    plt.close(fig)
    # A 256-colour palette keeps the committed PNG small (spectrogram noise compresses badly).
    image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    image.save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parents[1] / "docs" / "simulator_classes.png"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="Meditron")
    args = parser.parse_args(argv)
    print(plot(args.out, args.seed, args.device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
