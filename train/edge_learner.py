"""The real-data recipe for the AudioSet-pretrained edge CNN (EfficientAT mn04), sized for a 2-core CPU.

``run_recipe(EdgeRecipe)``:

1. builds the multi-source example table (train/sources.py: SPRSound events + ICBHI cycles, 8 s
   cyclic windows, patient-held-out val/eval roles, cached front end);
2. runs the frozen pretrained trunk (``features[:tune_from]``, BatchNorm statistics kept) once over
   every window and over ``views`` augmented copies of each training window (band-limiting to a
   random cut-off, gain, SpecAugment masks, time roll) and caches its output: the CPU then only
   trains the tail, which is what fits in the budget;
3. fine-tunes the tail (``features[tune_from:]`` + MLP head, new 4-class layer) with SAM/ASAM or
   AdamW, label smoothing, L2-SP towards the pretrained tail weights, and a sampler that balances
   sources and, within each source, classes; one epoch = ``samples_per_epoch`` draws (with
   ``adapters = "lora"|"bottleneck"`` the tail stays frozen and only adapters in it and the head
   train, train/cnn_adapters.py; they are merged into the tail before export);
4. selects the epoch on validation patients only: the mean over sources of the 4-class Score;
5. fits the baselines on the same splits (always-normal, a class/source-balanced logistic probe on
   the frozen pooled embedding, its L2 chosen on validation) and evaluates everything on every role;
6. writes a training run directory that ``stethoedge export`` turns into a bundle.

State is saved after every epoch (``state.pt``): an interrupted run resumes where it stopped.

Structure (train/learner.py's, after lmnt-com/diffwave): ``prepare_data`` builds the table, the backbone and
the trunk cache (``EdgeData``) and ``build_tail`` the trainable tail before the ``EdgeLearner``
(``train_epoch`` / ``evaluate`` / ``state_dict`` / ``load_state_dict`` / ``fit``) trains it; ``finish``
fits the baselines, evaluates, chooses what ships on validation and writes the run.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stethoedge.runtime.outputs import atomic_write_text, open_output, output_path
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec, efficientat_spec
from stethoedge.runtime.features import kaldi_mel
from stethoedge.train.cnn_adapters import is_adapter_tensor
from stethoedge.train.efficientat import MNConfig, MobileNetV3Audio, load_efficientat
from stethoedge.data.evaluation import report
from stethoedge.data.metrics import confusion_matrix, icbhi_scores
from stethoedge.train.options import from_options
from stethoedge.train.sam import SAM, optimizer_step
from stethoedge.train.sources import ExampleTable, SourceConfig, build_table, summary

log = logging.getLogger("stethoedge.train")


@dataclass
class EdgeRecipe:
    """Every setting of one real-data run (train/recipes/real-edge.toml)."""

    out: str
    weights: str
    sprsound: str | None = None
    icbhi: str | None = None
    icbhi_test: str | None = None
    cache_dir: str = "runs/cache"
    val_fraction: float = 0.2
    icbhi_eval_fraction: float = 0.25
    max_per_source: int | None = None
    width_mult: float = 0.4
    lowpass_hz: float = 0.0
    tune_from: int = 11  # first trainable block of features (17 = only the MLP head)
    views: int = 2  # augmented copies of every training window (0 = none)
    band_limit_p: float = 0.5
    band_limit_hz: tuple[float, float] = (800.0, 4000.0)
    gain_db: float = 6.0
    epochs: int = 12
    samples_per_epoch: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    tail_lr: float = 2e-4
    weight_decay: float = 1e-4
    l2sp: float = 1e-2
    label_smoothing: float = 0.1
    dropout: float = 0.3
    optimizer: str = "sam"  # sam | asam | adamw
    rho: float = 0.05
    seed: int = 0  # training seed (initialisation, sampling, augmentation)
    split_seed: int = 0  # which patients are held out for validation / evaluation
    threads: int | None = None
    yamnet: str | None = None  # yamnet.tflite: adds the frozen-YAMNet probe baseline to the evaluation
    init: str = "pretrained"  # "pretrained" (the AudioSet weights) or "random" (the from-scratch baseline)
    aft_lambda: float = 0.0  # > 0: a source-adversarial domain head (gradient reversal) on the pooled embedding
    # "lora" | "bottleneck": train adapters (train/cnn_adapters.py) in the frozen tail instead of the tail
    # itself; merged before export, so the run still writes a plain MobileNetV3Audio. "none": the shipped recipe.
    adapters: str = "none"
    adapter_rank: int = 8  # conv-LoRA rank
    adapter_reduction: int = 4  # bottleneck width = channels // reduction
    adapter_lr: float = 1e-3  # learning rate of the adapter tensors

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EdgeRecipe":
        """Build from a flat dict; unknown keys are a DataError."""
        values = dict(values)
        if "band_limit_hz" in values:
            values["band_limit_hz"] = tuple(float(v) for v in values["band_limit_hz"])
        return from_options(cls, values, "recipe option")


# --------------------------------------------------------------------------- augmentation (feature domain)


def band_centres_hz(spec: FeatureSpec) -> np.ndarray:
    """Centre frequency of every mel band of ``spec`` (Hz)."""
    high = spec.high_freq_hz if spec.high_freq_hz > 0 else 0.5 * spec.mel_layout_rate + spec.high_freq_hz
    lo, hi = kaldi_mel(spec.low_freq_hz), kaldi_mel(high)
    centres = lo + (np.arange(spec.n_mels) + 1) * (hi - lo) / (spec.n_mels + 1)
    return 700.0 * (np.exp(centres / 1127.0) - 1.0)


class FeatureAugment:
    """Random band limit (bands above a cut-off set to the log floor), gain, one frequency and one time mask, roll.

    Acts on normalised features (batch, frames, mels) of an ``efficientat-mel`` spec; band limiting
    imitates stethoscopes of lower bandwidth (SPRSound 4 kHz, Litt3200 2 kHz) so that bandwidth
    stops telling the sources apart.
    """

    def __init__(self, spec: FeatureSpec, recipe: EdgeRecipe, seed: int) -> None:
        self.centres = torch.from_numpy(band_centres_hz(spec)).float()
        self.floor = float((math.log(spec.log_floor) - spec.norm_mean) / (2 * spec.norm_std))
        self.gain_unit = math.log(10.0) / 10.0 / (2 * spec.norm_std)  # one dB in normalised units
        self.r = recipe
        self.gen = torch.Generator().manual_seed(seed)

    def _u(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.gen)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        n, frames, mels = x.shape
        at_floor = x <= self.floor + 1e-3
        gain = self._u(n, -self.r.gain_db, self.r.gain_db) * self.gain_unit
        x = torch.where(at_floor, x, x + gain[:, None, None])
        cut = self._u(n, *self.r.band_limit_hz)
        limit = (torch.rand(n, generator=self.gen) < self.r.band_limit_p)[:, None] & (self.centres[None] > cut[:, None])
        x = torch.where(limit[:, None, :], torch.full_like(x, self.floor), x)
        for i in range(n):
            f0, fw, t0, tw = (self._int(mels - 16), self._int(16), self._int(frames - 80), self._int(80))
            x[i, :, f0:f0 + fw] = x[i].mean()
            x[i, t0:t0 + tw, :] = x[i].mean()
            x[i] = torch.roll(x[i], self._int(frames), dims=0)
        return x

    def _int(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.gen))


# --------------------------------------------------------------------------- trunk cache


def trunk_outputs(trunk: nn.Module, features: np.ndarray, idx: np.ndarray, path: Path,
                  augment: FeatureAugment | None = None, batch: int = 32, desc: str = "trunk") -> np.ndarray:
    """Frozen trunk output for ``features[idx]`` (optionally augmented), cached as float32 .npy at ``path``."""
    if path.is_file():
        return np.load(path, mmap_mode="r")
    from tqdm import tqdm

    if not len(idx):
        raise DataError(f"no windows to run the trunk on for {path.name}")
    out = None
    with output_path(path) as tmp:  # an interrupted pass leaves no half cache behind
        with torch.no_grad():
            for s in tqdm(range(0, len(idx), batch), desc=desc, unit="batch"):
                x = torch.from_numpy(np.asarray(features[idx[s:s + batch]], dtype=np.float32))
                if augment is not None:
                    x = augment(x)
                y = trunk(MobileNetV3Audio.to_image(x)).numpy()
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(idx), *y.shape[1:]))
                out[s:s + len(y)] = y
        out.flush()
        del out
    return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------- tail


class Tail(nn.Module):
    """``features[tune_from:]`` + the classifier of a MobileNetV3Audio, on cached trunk outputs."""

    def __init__(self, model: MobileNetV3Audio, tune_from: int, freeze_bn: bool = True) -> None:
        super().__init__()
        self.blocks = copy.deepcopy(model.features[tune_from:])
        self.classifier = copy.deepcopy(model.classifier)
        self.freeze_bn = freeze_bn
        self.domain: nn.Module | None = None  # the optional source-adversarial head (never exported)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.blocks(h))

    def pooled(self, h: torch.Tensor) -> torch.Tensor:
        """The 384-d pooled embedding (the frozen probe's input)."""
        return self.blocks(h).mean(dim=(2, 3))

    def train(self, mode: bool = True) -> "Tail":
        super().train(mode)
        for m in self.modules():  # keep the pretrained BatchNorm statistics
            if self.freeze_bn and isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


def sample_weights(labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Each source equally likely, and within a source each present class equally likely."""
    w = np.zeros(len(labels), dtype=np.float64)
    srcs = np.unique(sources)
    for s in srcs:
        in_s = sources == s
        classes = np.unique(labels[in_s])
        for c in classes:
            m = in_s & (labels == c)
            w[m] = 1.0 / (len(srcs) * len(classes) * m.sum())
    return w / w.sum()


def predict_tail(tail: Tail, h: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits of the tail on cached trunk outputs."""
    tail.eval()
    with torch.no_grad():
        return np.concatenate([tail(torch.from_numpy(np.array(h[s:s + batch]))).numpy()
                               for s in range(0, len(h), batch)]) if len(h) else np.zeros((0, 4), np.float32)


def selection_score(logits: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> tuple[float, dict[str, float]]:
    """Mean over sources of the 4-class ICBHI Score (validation selection metric) and the per-source scores."""
    per = {}
    for s in np.unique(sources):
        m = sources == s
        # icbhi_scores: the mean of the defined terms, so a validation set lacking a class still ranks epochs
        per[str(s)] = icbhi_scores(confusion_matrix(labels[m], logits[m].argmax(1)))["score"]
    return float(np.nanmean(list(per.values()))), per


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, w_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              s_val: np.ndarray, l2_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)) -> tuple[nn.Linear, dict]:
    """Weighted multinomial logistic regression (LBFGS) on standardised embeddings; L2 chosen on validation."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.from_numpy(((x_train - mean) / std).astype(np.float32))
    yt, wt = torch.from_numpy(y_train), torch.from_numpy((w_train * len(w_train)).astype(np.float32))
    best = None
    for l2 in l2_grid:
        lin = nn.Linear(xt.shape[1], 4)
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=300, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = (nn.functional.cross_entropy(lin(xt), yt, reduction="none") * wt).mean() + l2 * lin.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            logits = lin(torch.from_numpy(((x_val - mean) / std).astype(np.float32))).numpy()
        score, per = selection_score(logits, y_val, s_val)
        if best is None or score > best[0]:
            best = (score, l2, lin, per)
    score, l2, lin, per = best
    # Fold the standardisation into the layer: one Linear on raw embeddings.
    with torch.no_grad():
        w = lin.weight / torch.from_numpy(std.astype(np.float32))
        lin.bias -= (w * torch.from_numpy(mean.astype(np.float32))).sum(1)
        lin.weight.copy_(w)
    return lin, {"l2": l2, "val_selection_score": score, "val_per_source": per}


# --------------------------------------------------------------------------- the run

#: Recipe keys that do not change what is trained (a run may resume with other values).
_NOT_RESUME_RELEVANT = {"threads", "cache_dir", "yamnet", "out"}


def _resume_key(recipe: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share; keys an older state lacks count as their defaults."""
    defaults = {f.name: f.default for f in fields(EdgeRecipe) if f.default is not MISSING}
    return {k: v for k, v in (defaults | recipe).items() if k not in _NOT_RESUME_RELEVANT}


def _save_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def cached_trunk(r: EdgeRecipe, spec: FeatureSpec, table: ExampleTable, pretrained: MobileNetV3Audio,
                 train_idx: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frozen-trunk outputs of every window (clean) and the training views (clean + ``r.views`` augmented)."""
    trunk = pretrained.features[:r.tune_from].eval()
    cache = Path(table.info["cache"])
    tag = f"trunk{r.tune_from}-mn{r.width_mult}" + ("-random" if r.init == "random" else "")
    h_clean = trunk_outputs(trunk, table.features, np.arange(len(table)), cache / f"{tag}-clean.npy",
                            desc="trunk (clean)")
    views = [h_clean[train_idx]] if len(train_idx) else []
    for v in range(r.views):
        aug = FeatureAugment(spec, r, seed=1000 + v + 7919 * r.seed)
        views.append(trunk_outputs(trunk, table.features, train_idx, cache / f"{tag}-view{v}-s{r.seed}.npy", aug,
                                   desc=f"trunk (augmented view {v + 1}/{r.views})"))
    return h_clean, views


def make_optimizer(r: EdgeRecipe, tail: Tail) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """(optimizer, the base optimizer the scheduler drives): new head at ``lr``, pretrained tail at ``tail_lr``."""
    new = ("classifier.5", "domain.")
    adapter = [p for k, p in tail.named_parameters() if p.requires_grad and is_adapter_tensor(k)]
    head = [p for k, p in tail.named_parameters() if k.startswith(new)]
    body = [p for k, p in tail.named_parameters() if not k.startswith(new) and p.requires_grad and
            not is_adapter_tensor(k)]
    groups = [{"params": head, "lr": r.lr}, {"params": body, "lr": r.tail_lr}]
    if adapter:  # only with r.adapters: the tail itself is frozen then
        groups.append({"params": adapter, "lr": r.adapter_lr})
    if r.optimizer in ("sam", "asam"):
        sam = SAM(groups, torch.optim.AdamW, rho=r.rho, adaptive=r.optimizer == "asam", weight_decay=r.weight_decay)
        return sam, sam.base_optimizer
    if r.optimizer == "adamw":
        adamw = torch.optim.AdamW(groups, weight_decay=r.weight_decay)
        return adamw, adamw
    raise DataError(f"optimizer {r.optimizer!r} is not sam, asam or adamw")


def adapt_tail(tail: Tail, r: EdgeRecipe) -> Tail:
    """Add ``r.adapters`` to every block of the tail and freeze it but for the adapters, the head (and a domain head)."""
    from stethoedge.train.cnn_adapters import CNNAdapterConfig, adapt_blocks, adapted_blocks, freeze_for_adapters

    if r.adapters not in ("lora", "bottleneck"):
        raise DataError(f"adapters {r.adapters!r} is not none, lora or bottleneck")
    cfg = CNNAdapterConfig(kind=r.adapters, from_block=0, rank=r.adapter_rank, reduction=r.adapter_reduction)
    blocks = adapted_blocks(tail.blocks, 0)
    if not blocks:
        raise DataError(f"tune_from {r.tune_from} leaves no inverted residual block for adapters (at most 15)")
    adapt_blocks(blocks, cfg)
    freeze_for_adapters(tail, blocks, tail.classifier, cfg)
    trainable = sum(p.numel() for p in tail.parameters() if p.requires_grad)
    log.info("%s adapters in %d tail blocks: %d trainable of %d tail parameters", r.adapters, len(blocks), trainable,
             sum(p.numel() for p in tail.parameters()))
    return tail


def run_recipe(r: EdgeRecipe) -> dict[str, Any]:
    """Run the recipe end to end (resumable); return the metrics also written to OUT/metrics.json."""
    threads = torch.get_num_threads()
    if r.threads:
        torch.set_num_threads(r.threads)
    try:
        return _run(r)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- before the learner: data and trunk


@dataclass
class EdgeData:
    """Everything the learner trains on, built before it: the example table, the backbone and its cached trunk."""

    spec: FeatureSpec
    src: SourceConfig
    table: ExampleTable
    counts: dict[str, Any]  # summary(table): examples per source, role and class
    pretrained: MobileNetV3Audio  # the AudioSet-pretrained network (or its random-init twin)
    load_report: dict[str, Any]
    train_idx: np.ndarray
    val_idx: np.ndarray
    h_clean: np.ndarray  # frozen-trunk output of every window (memory-mapped cache)
    views: list[np.ndarray]  # the training windows' trunk outputs: clean + ``r.views`` augmented copies
    h_val: np.ndarray  # h_clean of the validation windows, in memory

    @property
    def cache(self) -> Path:
        return Path(self.table.info["cache"])

    @property
    def sources(self) -> list[str]:
        return sorted(set(self.table.source.tolist()))

    def split(self, role: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, sources) of the ``"train"`` or the ``"val"`` windows."""
        idx = self.train_idx if role == "train" else self.val_idx
        return self.table.label[idx], self.table.source[idx]


def load_backbone(r: EdgeRecipe, spec: FeatureSpec) -> tuple[MobileNetV3Audio, dict[str, Any]]:
    """The AudioSet-pretrained mn04 (``r.init == "pretrained"``) or the same network randomly initialised."""
    mn_cfg = MNConfig(width_mult=r.width_mult, n_classes=4, n_frames=spec.num_frames, n_mels=spec.n_mels,
                      dropout=r.dropout)
    if r.init == "random":  # the from-scratch baseline: same network, same recipe, no AudioSet
        pretrained, load_report = MobileNetV3Audio(mn_cfg).eval(), {"source": "random initialisation"}
        for m in pretrained.modules():  # EfficientAT's 0.01 suits long AudioSet runs, not a few hundred steps
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        return pretrained, load_report
    if r.init == "pretrained":
        return load_efficientat(r.weights, mn_cfg)
    raise DataError(f"init {r.init!r} is not 'pretrained' or 'random'")


def prepare_data(r: EdgeRecipe) -> EdgeData:
    """The example table (its counts printed), the backbone and its cached trunk outputs."""
    spec = efficientat_spec(lowpass_hz=r.lowpass_hz)
    src = SourceConfig(sprsound=r.sprsound, icbhi=r.icbhi, icbhi_test=r.icbhi_test, val_fraction=r.val_fraction,
                       icbhi_eval_fraction=r.icbhi_eval_fraction, seed=r.split_seed, max_per_source=r.max_per_source)
    table = build_table(src, spec, r.cache_dir)
    counts = summary(table)
    print("examples (normal, crackle, wheeze, both, patients): " + json.dumps(counts), flush=True)
    pretrained, load_report = load_backbone(r, spec)
    train_idx, val_idx = table.where("train"), table.where("val")
    if not len(train_idx) or not len(val_idx):
        raise DataError(f"need training and validation windows, got {len(train_idx)} and {len(val_idx)}")
    h_clean, views = cached_trunk(r, spec, table, pretrained, train_idx)
    return EdgeData(spec, src, table, counts, pretrained, load_report, train_idx, val_idx, h_clean, views,
                    np.asarray(h_clean[val_idx]))


def build_tail(r: EdgeRecipe, data: EdgeData) -> Tail:
    """The trainable tail: with ``r.adapters`` in it, with ``r.aft_lambda`` > 0 a source-adversarial head on it."""
    tail = Tail(data.pretrained, r.tune_from, freeze_bn=r.init == "pretrained")
    if r.adapters != "none":
        adapt_tail(tail, r)
    if r.aft_lambda > 0:
        from stethoedge.train.domain import DomainHead

        tail.domain = DomainHead(data.pretrained.cfg.last_conv_channels, n_domains=len(data.sources))
    return tail


# --------------------------------------------------------------------------- the learner


class EdgeLearner:
    """The tail's training loop (the way train/learner.py's Learner splits the AST's).

    Built from the recipe, the data and the tail (``prepare_data``, ``build_tail``); owns the L2-SP
    reference, the optimizer (SAM/ASAM/AdamW), the warm-up + cosine schedule, the balanced sampler
    and its generator, the history and the best epoch:

        train_epoch()       ``samples_per_epoch`` balanced draws over the training views; the mean loss
        evaluate()          validation loss and selection score (mean over sources of the 4-class Score)
        state_dict()        RUN/state.pt: tail, optimizer, scheduler, generator, history, best, epoch, recipe
        load_state_dict(s)  the reverse; ``resume()`` reads ``state_path`` when the settings match
        fit()               resume, the remaining epochs (state saved after each), then the selected epoch's tail
    """

    def __init__(self, r: EdgeRecipe, data: EdgeData, tail: Tail, state_path: Path) -> None:
        self.r, self.data, self.tail, self.state_path = r, data, tail, state_path
        self.y_train, self.s_train = data.split("train")
        self.d_train = np.array([data.sources.index(x) for x in self.s_train], dtype=np.int64)
        self.reference = {k: v.detach().clone() for k, v in tail.named_parameters()  # the L2-SP anchor (frozen
                          if v.requires_grad and not k.startswith(("classifier.5", "domain."))}  # ones never move)
        self.optimizer, base = make_optimizer(r, tail)
        self.steps_per_epoch = steps = math.ceil(r.samples_per_epoch / r.batch_size)
        total = r.epochs * steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            base, lambda s: min(1.0, (s + 1) / steps) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
        self.weights = torch.from_numpy(sample_weights(self.y_train, self.s_train))
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.epoch = 0  # epochs done
        self.gen = torch.Generator().manual_seed(r.seed)

    def objective(self, h: torch.Tensor, y: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Label-smoothed cross-entropy + L2-SP (+ the source-adversarial loss)."""
        tail, r = self.tail, self.r
        fmap = tail.blocks(h)
        loss = nn.functional.cross_entropy(tail.classifier(fmap), y, label_smoothing=r.label_smoothing)
        loss = loss + r.l2sp * sum((p - self.reference[k]).square().sum() for k, p in tail.named_parameters()
                                   if k in self.reference)
        if tail.domain is not None:  # the reversed gradient pushes the tail towards source-blind features
            loss = loss + r.aft_lambda * nn.functional.cross_entropy(tail.domain(fmap.mean(dim=(2, 3))), d)
        return loss

    def train_step(self, h: torch.Tensor, y: torch.Tensor, d: torch.Tensor) -> float:
        """One optimizer step (SAM: two passes) and one scheduler step; the first pass's loss."""
        loss = optimizer_step(self.optimizer, lambda: self.objective(h, y, d))
        self.scheduler.step()
        return loss.item()

    def train_epoch(self) -> float:
        """One epoch: ``samples_per_epoch`` draws balanced over sources and classes, each from a random view."""
        from tqdm import tqdm

        r, views = self.r, self.data.views
        self.tail.train()
        draws = torch.multinomial(self.weights, self.steps_per_epoch * r.batch_size, replacement=True,
                                  generator=self.gen).numpy()
        view_of = torch.randint(0, len(views), (len(draws),), generator=self.gen).numpy()
        total_loss = 0.0
        for step in tqdm(range(self.steps_per_epoch), desc=f"epoch {self.epoch + 1}/{r.epochs}", unit="step",
                         leave=False):
            sl = slice(step * r.batch_size, (step + 1) * r.batch_size)
            h = torch.from_numpy(np.stack([views[v][i] for v, i in zip(view_of[sl], draws[sl])]))
            y, d = torch.from_numpy(self.y_train[draws[sl]]), torch.from_numpy(self.d_train[draws[sl]])
            total_loss += self.train_step(h, y, d)
        return total_loss / self.steps_per_epoch

    def evaluate(self) -> tuple[float, float, dict[str, float]]:
        """(validation loss, selection score, per-source scores) of the current tail."""
        y_val, s_val = self.data.split("val")
        logits = predict_tail(self.tail, self.data.h_val)
        score, per = selection_score(logits, y_val, s_val)
        val_loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y_val)))
        return val_loss, score, per

    def record(self, train_loss: float, val_loss: float, score: float, per: dict[str, float]) -> None:
        """Close an epoch: its history row and line, and the best epoch so far (chosen on validation only)."""
        epoch = self.epoch + 1
        self.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                             "val_selection_score": score, **{f"val_score_{k}": v for k, v in per.items()}})
        print(f"epoch {epoch}/{self.r.epochs}: loss {train_loss:.4f} val loss {val_loss:.4f} "
              f"val Score (mean over sources) {score:.3f} " + " ".join(f"{k} {v:.3f}" for k, v in per.items()),
              flush=True)
        if self.best is None or score > self.best["val_selection_score"]:
            self.best = {"epoch": epoch, "val_selection_score": score, "val_per_source": per,
                         "tail": copy.deepcopy(self.tail.state_dict())}
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return {"tail": self.tail.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "gen": self.gen.get_state(), "history": self.history,
                "best": self.best, "epoch": self.epoch, "recipe": asdict(self.r)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tail.load_state_dict(state["tail"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.gen.set_state(state["gen"])
        self.history, self.best, self.epoch = state["history"], state["best"], state["epoch"]

    def resume(self) -> bool:
        """Continue from ``state_path`` when there is one; a state of other settings is a DataError."""
        if not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, map_location="cpu", weights_only=False)
        if _resume_key(state["recipe"]) != _resume_key(asdict(self.r)):
            raise DataError(f"{self.state_path} belongs to a run with other settings; use a new --out")
        self.load_state_dict(state)
        print(f"resumed from {self.state_path} after epoch {self.epoch}", flush=True)
        return True

    def fit(self) -> Tail:
        """Resume, train the remaining epochs (state saved after each); the tail of the selected epoch."""
        self.resume()
        while self.epoch < self.r.epochs:
            train_loss = self.train_epoch()
            self.record(train_loss, *self.evaluate())
            with output_path(self.state_path) as tmp:
                torch.save(self.state_dict(), tmp)
        assert self.best is not None
        self.tail.load_state_dict(self.best["tail"])
        if self.r.adapters != "none":
            from stethoedge.train.cnn_adapters import merge_cnn_adapters

            merge_cnn_adapters(self.tail.eval())  # a plain tail from here on: assemble() and export see no adapter
        return self.tail


# --------------------------------------------------------------------------- data -> learner -> baselines, the run


def _run(r: EdgeRecipe) -> dict[str, Any]:
    started = time.time()
    torch.manual_seed(r.seed)
    out = Path(r.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(r)
    learner = EdgeLearner(r, data, build_tail(r, data), out / "state.pt")
    learner.fit()
    return finish(r, out, data, learner, started)


def probe_baseline(r: EdgeRecipe, data: EdgeData) -> tuple[nn.Linear, dict[str, Any], np.ndarray]:
    """The frozen pretrained embedding + a logistic probe (fit on train, L2 on val): (probe, info, logits)."""
    frozen = Tail(data.pretrained, r.tune_from).eval()
    with torch.no_grad():
        emb = np.concatenate([frozen.pooled(torch.from_numpy(np.array(data.h_clean[s:s + 256]))).numpy()
                              for s in range(0, len(data.table), 256)])
    (y_train, s_train), (y_val, s_val) = data.split("train"), data.split("val")
    probe, probe_info = fit_probe(emb[data.train_idx], y_train, sample_weights(y_train, s_train), emb[data.val_idx],
                                  y_val, s_val)
    with torch.no_grad():
        probe_logits = probe(torch.from_numpy(emb)).numpy()
    return probe, probe_info, probe_logits


def finish(r: EdgeRecipe, out: Path, data: EdgeData, learner: EdgeLearner, started: float) -> dict[str, Any]:
    """Baselines on the same splits, evaluation on every role, the shipped model chosen on validation; the run."""
    model_logits = predict_tail(learner.tail, data.h_clean)
    if r.init == "random":
        return _finalize_scratch(r, out, data, learner, model_logits, started)
    probe, probe_info, probe_logits = probe_baseline(r, data)
    predictions = {"always-normal": np.zeros(len(data.table), np.int64)}
    if r.yamnet:
        predictions["YAMNet frozen + logistic probe"] = yamnet_probe(r, data.src, data.table, data.cache)
    predictions["mn04 frozen + logistic probe"] = probe_logits.argmax(1)
    predictions["mn04 fine-tuned tail"] = model_logits.argmax(1)

    # The shipped candidate is chosen on validation patients only, like the epoch.
    best = learner.best
    tuned_wins = best["val_selection_score"] >= probe_info["val_selection_score"]
    shipped = "mn04 fine-tuned tail" if tuned_wins else "mn04 frozen + logistic probe"
    model = (assemble(data.pretrained, learner.tail, r.tune_from) if tuned_wins
             else assemble_probe(data.pretrained, probe))
    print(f"validation selection score: fine-tuned tail {best['val_selection_score']:.3f} (epoch {best['epoch']}), "
          f"frozen probe {probe_info['val_selection_score']:.3f} -> shipping the {shipped}", flush=True)
    metrics = _metrics(r, data, learner, evaluate_table(data.table, predictions), started,
                       probe=probe_info, shipped=shipped)
    write_run(out, model, data.spec, data.table, metrics, data.src)
    _save_predictions(out, data.table, predictions, model_logits=model_logits, probe_logits=probe_logits)
    return metrics


def _metrics(r: EdgeRecipe, data: EdgeData, learner: EdgeLearner, evaluation: dict, started: float,
             **extra: Any) -> dict[str, Any]:
    best = learner.best
    return {"recipe": asdict(r), "examples": data.counts, "pretrained": data.load_report, "best_epoch": best["epoch"],
            "selected_on": "validation patients (mean over sources of the 4-class Score)",
            "val_selection_score": best["val_selection_score"], "val_per_source": best["val_per_source"],
            **extra, "history": learner.history, "evaluation": evaluation, "train_seconds": time.time() - started}


def _save_predictions(out: Path, table: ExampleTable, predictions: dict[str, np.ndarray],
                      **logits: np.ndarray) -> None:
    """OUT/predictions.npz: every prediction set, the table's columns and the raw logits."""
    with open_output(out / "predictions.npz") as fh:
        np.savez(fh, **predictions, label=table.label, role=table.role, source=table.source,
                 patient=table.patient, device=table.device, **logits)


def _finalize_scratch(r: EdgeRecipe, out: Path, data: EdgeData, learner: EdgeLearner, logits: np.ndarray,
                      started: float) -> dict[str, Any]:
    """The random-initialisation baseline's run: its own predictions only (no probes of random features)."""
    name = "mn04 from random init"
    predictions = {"always-normal": np.zeros(len(data.table), np.int64), name: logits.argmax(1)}
    metrics = _metrics(r, data, learner, evaluate_table(data.table, predictions), started, shipped=name)
    write_run(out, assemble(data.pretrained, learner.tail, r.tune_from), data.spec, data.table, metrics, data.src)
    _save_predictions(out, data.table, predictions, model_logits=logits)
    return metrics


def yamnet_probe(r: EdgeRecipe, src: SourceConfig, table: ExampleTable, cache: Path) -> np.ndarray:
    """Predictions of a logistic probe on frozen YAMNet embeddings of the same segments (fit on train, L2 on val)."""
    from stethoedge.train.sources import iter_segments
    from stethoedge.train.yamnet_embed import YamnetEmbedder, embed_segments

    emb = embed_segments((seg[0] for seg in iter_segments(src)), cache / "yamnet-embeddings.npy",
                         embedder=YamnetEmbedder(r.yamnet), total=len(table))
    if len(emb) != len(table):
        raise DataError(f"{cache / 'yamnet-embeddings.npy'}: {len(emb)} rows for {len(table)} windows; delete it")
    tr, va = table.role == "train", table.role == "val"
    probe, _ = fit_probe(emb[tr], table.label[tr], sample_weights(table.label[tr], table.source[tr]), emb[va],
                         table.label[va], table.source[va])
    with torch.no_grad():
        return probe(torch.from_numpy(emb.astype(np.float32))).numpy().argmax(1)


def evaluate_table(table: ExampleTable, predictions: dict[str, np.ndarray], n_boot: int = 1000) -> dict[str, Any]:
    """report() of every prediction set on every (role, source) and (role, source, device) with windows."""
    out: dict[str, Any] = {}
    for role in sorted(set(table.role.tolist())):
        for source in sorted(set(table.source[table.role == role].tolist())):
            idx = table.where(role, source)
            key = f"{role}/{source}"
            out[key] = {name: report(table.label[idx], pred[idx], table.patient[idx], n_boot=n_boot)
                        for name, pred in predictions.items()}
            devices = sorted(set(table.device[idx].tolist()))
            if len(devices) > 1:
                for d in devices:
                    di = idx[table.device[idx] == d]
                    out[f"{key}/{d}"] = {name: report(table.label[di], pred[di], table.patient[di], n_boot=n_boot)
                                         for name, pred in predictions.items()}
    return out


def assemble(pretrained: MobileNetV3Audio, tail: Tail, tune_from: int) -> MobileNetV3Audio:
    """One MobileNetV3Audio: the pretrained trunk followed by the fine-tuned tail and head (eval mode)."""
    model = copy.deepcopy(pretrained)
    for i, block in enumerate(tail.blocks):
        model.features[tune_from + i] = copy.deepcopy(block)
    model.classifier = copy.deepcopy(tail.classifier)
    return model.eval()


def assemble_probe(pretrained: MobileNetV3Audio, probe: nn.Linear) -> MobileNetV3Audio:
    """The frozen pretrained network with a linear probe on its pooled embedding as the head (eval mode)."""
    from dataclasses import replace

    model = MobileNetV3Audio(replace(pretrained.cfg, head="linear"))
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("classifier.")}
    state |= {"classifier.2.weight": probe.weight.detach().clone(), "classifier.2.bias": probe.bias.detach().clone()}
    model.load_state_dict(state)
    return model.eval()


def write_run(out: Path, model: MobileNetV3Audio, spec: FeatureSpec, table: ExampleTable, metrics: dict[str, Any],
              src: SourceConfig) -> None:
    """checkpoint.pt + splits.json (+ metrics.json): the run directory ``stethoedge export`` reads."""
    from stethoedge.train.checkpoint import save_checkpoint

    save_checkpoint(out / "checkpoint.pt", model, model.cfg, spec, epoch=metrics["best_epoch"],
                    trained_on=describe_training(metrics, src))
    icbhi = {role: sorted(set(table.recording[(table.source == "icbhi") & (table.role == role)].tolist()))
             for role in ("train", "val", "eval")}
    _save_json(out / "splits.json", {"data": str(Path(src.icbhi).resolve()) if src.icbhi else None,
                                     "train": icbhi["train"], "val": icbhi["val"], "test": icbhi["eval"],
                                     "note": "ICBHI recordings by role; 'test' = held-out ICBHI patients (eval)"})
    _save_json(out / "metrics.json", metrics)


def describe_training(metrics: dict[str, Any], src: SourceConfig) -> dict[str, Any]:
    """What the model was trained on, for the checkpoint and the bundle manifest."""
    return {"sources": {"sprsound": "SPRSound 2022 train2022 (CC BY), minus validation patients" if src.sprsound else None,
                        "icbhi": "ICBHI 2017 official-train recordings (research use), minus val/eval patients"
                        if src.icbhi else None},
            "examples": metrics["examples"],
            "pretrained": "EfficientAT mn04_as (AudioSet, MIT)" if metrics["recipe"]["init"] == "pretrained" else None,
            "selected_on": metrics["selected_on"], "best_epoch": metrics["best_epoch"],
            "head": metrics["shipped"]}
