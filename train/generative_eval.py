"""Quality of generated samples, measured: Frechet distance in the classifier's embedding space per
class (FAD-style), precision/recall coverage, a memorisation check and train-on-synthetic-test-on-real.

All distances are computed on embeddings ``(n, dim)``: the classifier's (``ClassifierEmbedder``,
from ``load_checkpoint(run).model.embed``) or, without a classifier, the flattened mels
(``flat_embed``). ``evaluate_generator`` puts everything in one report; ``write_report`` writes
it as ``quality.md`` + ``quality.json`` + ``grid.png`` (real vs generated mels per class).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stethoedge.runtime.outputs import atomic_write_text, output_path
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.labels import CLASSES
from stethoedge.train.generators.base import MelGenerator, MelSet
from stethoedge.data.metrics import evaluate

Embedder = Callable[[torch.Tensor, FeatureSpec], np.ndarray]


# ------------------------------------------------------------------ distances


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussians fitted to two embedding sets.

    The matrix square root is taken as (S_a^1/2 S_b S_a^1/2)^1/2 with symmetric eigendecompositions,
    which stays real and exact for identical sets (distance 0 up to rounding).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise DataError(f"Frechet distance needs two (n, dim) sets of the same dim, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise DataError("Frechet distance needs at least 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False).reshape(a.shape[1], -1), np.cov(b, rowvar=False).reshape(b.shape[1], -1)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(middle, 0, None))))
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)
    return max(value, 0.0)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d2 = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.clip(d2, 0, None))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of every point to its k-th nearest neighbour within ``x`` (itself excluded)."""
    d = _pairwise(x, x)
    np.fill_diagonal(d, np.inf)
    k = min(k, len(x) - 1)
    return np.sort(d, axis=1)[:, k - 1]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al., 2019) with k-NN balls.

    Precision: share of generated samples inside some real sample's k-NN ball (fidelity);
    recall: share of real samples inside some generated sample's ball (coverage / diversity).
    """
    if len(real) < 2 or len(fake) < 2:
        raise DataError("precision/recall need at least 2 real and 2 generated samples")
    cross = _pairwise(fake, real)
    precision = float(np.mean((cross <= knn_radii(real, k)[None]).any(axis=1)))
    recall = float(np.mean((cross.T <= knn_radii(fake, k)[None]).any(axis=1)))
    return precision, recall


@dataclass
class MemorisationReport:
    """Nearest-training-sample distances of generated samples and which ones look copied."""

    distances: np.ndarray  # (n_generated,) distance to the nearest training sample
    real_distances: np.ndarray  # (n_train,) leave-one-out nearest-neighbour distance among training samples
    threshold: float
    flagged: np.ndarray  # indices of generated samples closer than ``threshold``

    @property
    def fraction(self) -> float:
        """Share of generated samples flagged."""
        return float(len(self.flagged) / max(1, len(self.distances)))


def memorisation_check(generated: np.ndarray, train: np.ndarray, quantile: float = 0.05) -> MemorisationReport:
    """Flag generated samples nearer to a training sample than real training samples are to each other.

    The threshold is the ``quantile`` of the real-to-real nearest-neighbour distances (leave one
    out); a generated sample whose nearest training sample is closer (or an exact copy) is
    flagged. Patient recordings must not leak out of a generator.
    """
    generated = np.asarray(generated, np.float64).reshape(len(generated), -1)
    train = np.asarray(train, np.float64).reshape(len(train), -1)
    if len(train) < 2:
        raise DataError("the memorisation check needs at least 2 training samples")
    nearest = _pairwise(generated, train).min(axis=1)
    real = knn_radii(train, 1)
    threshold = float(np.quantile(real, quantile))
    scale = float(np.median(real)) or 1.0
    flagged = np.flatnonzero((nearest < threshold) | (nearest <= 1e-6 * scale))
    return MemorisationReport(nearest, real, threshold, flagged)


# ------------------------------------------------------------------ embeddings


def flat_embed(mels: torch.Tensor, spec: FeatureSpec | None = None, pool: int = 4) -> np.ndarray:
    """Classifier-free embedding: mels average-pooled by ``pool`` on both axes and flattened."""
    x = F.avg_pool2d(mels[:, None].float(), pool, ceil_mode=True) if pool > 1 else mels[:, None].float()
    return x.flatten(1).numpy().astype(np.float64)


class ClassifierEmbedder:
    """Generated mels -> the trained classifier's pooled embedding (``model.embed``).

    The mels are de-normalised with their own spec and re-normalised with the classifier's,
    resampled along the mel axis if the band count differs, and repeated cyclically to the
    classifier's window (as training pads short cycles).
    """

    def __init__(self, run: str | os.PathLike, batch_size: int = 32) -> None:
        from stethoedge.train.checkpoint import load_checkpoint

        loaded = load_checkpoint(run)
        self.model, self.spec, self.batch_size = loaded.model.eval(), loaded.spec, batch_size

    def to_classifier_input(self, mels: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
        """(n, frames, mels) in ``spec`` normalisation -> (n, classifier frames, classifier mels)."""
        x = mels.float() * (2 * spec.norm_std) + spec.norm_mean
        x = (x - self.spec.norm_mean) / (2 * self.spec.norm_std)
        if x.shape[2] != self.spec.n_mels:
            x = F.interpolate(x, size=self.spec.n_mels, mode="linear", align_corners=True)
        frames = self.spec.num_frames
        return x.repeat(1, -(-frames // x.shape[1]), 1)[:, :frames]

    @torch.no_grad()
    def __call__(self, mels: torch.Tensor, spec: FeatureSpec) -> np.ndarray:
        x = self.to_classifier_input(mels, spec)
        out = [self.model.embed(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).double().numpy()


# ------------------------------------------------------------------ train on synthetic, test on real


class TinyCNN(nn.Module):
    """A small mel classifier for the train-on-synthetic-test-on-real probe."""

    def __init__(self, n_classes: int = len(CLASSES), width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * width * 16, n_classes))

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        return self.net(mels[:, None])


def train_test_score(train: MelSet, test: MelSet, epochs: int = 30, seed: int = 0, batch_size: int = 32) -> dict[str, Any]:
    """Fit ``TinyCNN`` on ``train`` and evaluate on ``test`` (ICBHI metrics); class-balanced sampling."""
    if len(train) == 0 or len(test) == 0:
        raise DataError("train-on-X-test-on-Y needs samples on both sides")
    torch.manual_seed(seed)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    counts = np.bincount(train.labels.numpy(), minlength=len(CLASSES)).astype(np.float64)
    weights = torch.as_tensor(1.0 / counts[train.labels.numpy()])
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, -(-epochs * len(train) // batch_size))
    model.train()
    for _ in range(steps):
        idx = torch.multinomial(weights, min(batch_size, len(train)), replacement=True, generator=gen)
        loss = F.cross_entropy(model(train.mels[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(test.mels[i:i + 256]) for i in range(0, len(test), 256)]).argmax(1).numpy()
    return evaluate(test.labels.numpy(), pred)


# ------------------------------------------------------------------ report


def generate_per_class(generator: MelGenerator, classes: list[int], n: int, seed: int = 0) -> MelSet:
    """``n`` samples of each class as a MelSet in the generator's spec."""
    mels = [generator.sample(c, n, seed=seed + c) for c in classes]
    labels = [torch.full((n,), c, dtype=torch.int64) for c in classes]
    return MelSet(torch.cat(mels), torch.cat(labels), generator.spec)


def evaluate_generator(generator: MelGenerator, real_train: MelSet, real_test: MelSet | None = None,
                       embed: Embedder | None = None, n_per_class: int = 64, seed: int = 0, k: int = 3,
                       tstr_epochs: int = 30) -> dict[str, Any]:
    """Per trained class: Frechet distance, precision, recall, memorised share; plus TSTR vs TRTR."""
    if generator.classes is None:
        raise DataError("evaluate a trained generator (fit it or load a checkpoint)")
    embed = embed or flat_embed
    fake = generate_per_class(generator, generator.classes, n_per_class, seed)
    rows = []
    for c in generator.classes:
        real_c, fake_c = real_train.subset([c]), fake.subset([c])
        if len(real_c) < 2:
            rows.append({"class": CLASSES[c], "n_real": len(real_c), "n_generated": len(fake_c), "note": "too few real"})
            continue
        e_real, e_fake = embed(real_c.mels, real_train.spec), embed(fake_c.mels, fake.spec)
        precision, recall = precision_recall(e_real, e_fake, k)
        memo = memorisation_check(fake_c.mels.numpy(), real_c.mels.numpy())
        rows.append({"class": CLASSES[c], "n_real": len(real_c), "n_generated": len(fake_c),
                     "frechet": frechet_distance(e_real, e_fake), "precision": precision, "recall": recall,
                     "memorised": memo.fraction, "nn_generated_median": float(np.median(memo.distances)),
                     "nn_real_median": float(np.median(memo.real_distances))})
    report: dict[str, Any] = {"kind": generator.kind, "classes": [CLASSES[c] for c in generator.classes],
                              "n_per_class": n_per_class, "seed": seed, "per_class": rows}
    if real_test is not None and len(real_test):
        test = real_test.subset(generator.classes)
        report["tstr"] = train_test_score(fake, test, tstr_epochs, seed)
        report["trtr"] = train_test_score(real_train.subset(generator.classes), test, tstr_epochs, seed)
    report["_samples"] = fake
    return report


def report_table(report: dict[str, Any]) -> str:
    """Markdown table of a report from ``evaluate_generator``."""
    lines = [f"# generator quality: {report['kind']}", "",
             "| class | real | generated | Frechet (emb.) | precision | recall | memorised | NN gen->train | NN real->real |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["per_class"]:
        if "frechet" not in r:
            lines.append(f"| {r['class']} | {r['n_real']} | {r['n_generated']} | - | - | - | - | - | - |")
            continue
        lines.append(f"| {r['class']} | {r['n_real']} | {r['n_generated']} | {r['frechet']:.3f} | {r['precision']:.2f} | "
                     f"{r['recall']:.2f} | {100 * r['memorised']:.1f} % | {r['nn_generated_median']:.2f} | "
                     f"{r['nn_real_median']:.2f} |")
    for key, what in (("tstr", "train on synthetic, test on real"), ("trtr", "train on real, test on real")):
        if key in report:
            m = report[key]
            lines.append(f"\n{what}: Score {m['score']:.3f}, macro-F1 {m['macro_f1']:.3f} (n={m['n']})")
    return "\n".join(lines) + "\n"


def save_grid(real: MelSet, fake: MelSet, classes: list[int], path: Path, per_class: int = 3) -> Path:
    """PNG grid: one row per class, ``per_class`` real then ``per_class`` generated mels (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(classes), 2 * per_class, figsize=(2 * 2 * per_class, 1.8 * len(classes)), squeeze=False)
    for row, c in enumerate(classes):
        for col, (source, tag) in enumerate([(real, "real")] * per_class + [(fake, "generated")] * per_class):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            pool = source.subset([c])
            i = col % per_class
            if i < len(pool):
                ax.imshow(pool.mels[i].T.numpy(), origin="lower", aspect="auto", cmap="magma")
            ax.set_title(f"{CLASSES[c]} {tag}", fontsize=7)
    fig.tight_layout()
    try:
        with output_path(path) as tmp:
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)
    return path


def write_report(report: dict[str, Any], real: MelSet, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``quality.md``, ``quality.json`` and ``grid.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "quality.md", report_table(report))
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    atomic_write_text(out / "quality.json", json.dumps(public, indent=2) + "\n")
    classes = [CLASSES.index(c) for c in report["classes"]]
    save_grid(real, report["_samples"], classes, out / "grid.png")
    return {"table": out / "quality.md", "json": out / "quality.json", "grid": out / "grid.png"}
