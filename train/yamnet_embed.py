"""YAMNet frozen embeddings: a pretrained-feature baseline for the respiratory-sound classifier.

YAMNet (MobileNetV1 on AudioSet, 521 classes) ships as a LiteRT file whose one input is 15,600
samples (0.975 s) of 16 kHz float audio in [-1, 1] and whose one output is the 521 class scores
(sigmoid). The 1024-d embedding is the global average pool of the last convolution: the input of
the final fully connected layer (``yamnet_frames/global_average_pooling2d/Mean``, shape (1, 1024)).
It is an inner tensor, so the interpreter is opened with ``experimental_preserve_all_tensors``.

A clip is cut into 0.975 s patches every 0.4875 s (YAMNet's own framing; a last partial patch is
dropped) and the per-patch embeddings / scores are averaged. A clip shorter than one patch is
cyclically padded to one patch, as the device pads a short recording.

Torch-free: numpy and ai-edge-litert only.

    python -m stethoedge.train.yamnet_embed --out /work/cache/yamnet_embeddings.npy
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from stethoedge.runtime.errors import AudioError, DataError
from stethoedge.runtime.outputs import open_output
from stethoedge.runtime.padding import cyclic_pad

SAMPLE_RATE = 16000
PATCH_SAMPLES = 15600  # 0.975 s: 96 frames of 10 ms + the 25 ms window
HOP_SAMPLES = 7800  # 0.4875 s
EMBED_DIM = 1024
N_CLASSES = 521
EMBEDDING_TENSOR = "yamnet_frames/global_average_pooling2d/Mean"
SINE_WAVE_CLASS = 495  # yamnet_class_map.csv: 495,/m/01v_m0,Sine wave

INSTALL = "pip install ai-edge-litert"


def default_weights() -> Path:
    """$STETHOEDGE_YAMNET, else ../shared/weights/yamnet.tflite beside the repository."""
    env = os.environ.get("STETHOEDGE_YAMNET")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "yamnet.tflite"


def patch_starts(n_samples: int) -> list[int]:
    """Start samples of the whole 0.975 s patches (hop 0.4875 s) of an n_samples clip (>= one patch)."""
    return list(range(0, n_samples - PATCH_SAMPLES + 1, HOP_SAMPLES))


class YamnetEmbedder:
    """One LiteRT interpreter over yamnet.tflite; per-clip mean embeddings and class scores."""

    def __init__(self, path: str | os.PathLike | None = None, threads: int = 1) -> None:
        self.path = Path(path) if path is not None else default_weights()
        if not self.path.is_file():
            raise DataError(f"YAMNet weights not found: {self.path}")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise DataError(f"cannot load {self.path}: ai-edge-litert is not installed ({INSTALL})") from None
        try:
            with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": we need one inner tensor
                warnings.simplefilter("ignore", UserWarning)
                self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads,
                                               experimental_preserve_all_tensors=True)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise DataError(f"cannot load YAMNet from {self.path}: {str(exc).splitlines()[0]}") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if (len(inputs) != 1 or len(outputs) != 1 or tuple(inputs[0]["shape"]) != (PATCH_SAMPLES,)
                or tuple(outputs[0]["shape"])[-1] != N_CLASSES):
            raise DataError(f"{self.path} is not YAMNet: input {[tuple(d['shape']) for d in inputs]}, "
                            f"output {[tuple(d['shape']) for d in outputs]}")
        self.input_index = int(inputs[0]["index"])
        self.output_index = int(outputs[0]["index"])
        self.embedding_index, self.embedding_name = self._find_embedding()

    def _find_embedding(self) -> tuple[int, str]:
        """The (1, 1024) float32 global-average-pool tensor that feeds the final dense layer."""
        found = [d for d in self.interpreter.get_tensor_details()
                 if d["name"].split(";")[0] == EMBEDDING_TENSOR and tuple(d["shape"]) == (1, EMBED_DIM)
                 and d["dtype"] == np.float32]
        if len(found) != 1:
            raise DataError(f"{self.path}: expected one (1, {EMBED_DIM}) tensor named {EMBEDDING_TENSOR}, "
                            f"found {len(found)}")
        return int(found[0]["index"]), found[0]["name"].split(";")[0]

    def _patches(self, audio_16k: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio_16k, dtype=np.float32)
        if audio.ndim != 1:
            raise AudioError(f"YAMNet needs 1-D 16 kHz audio, got shape {audio.shape}")
        if audio.shape[0] == 0:
            raise AudioError("cannot embed empty audio")
        if not np.all(np.isfinite(audio)):
            raise AudioError("audio contains NaN or infinite samples")
        if audio.shape[0] < PATCH_SAMPLES:
            audio = cyclic_pad(audio, PATCH_SAMPLES)
        return np.stack([audio[s:s + PATCH_SAMPLES] for s in patch_starts(audio.shape[0])])

    def run(self, audio_16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-patch (embeddings (p, 1024), scores (p, 521)) of one clip, float32."""
        patches = self._patches(audio_16k)
        emb = np.empty((len(patches), EMBED_DIM), np.float32)
        scores = np.empty((len(patches), N_CLASSES), np.float32)
        for i, patch in enumerate(patches):
            self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(patch))
            self.interpreter.invoke()
            emb[i] = self.interpreter.get_tensor(self.embedding_index).reshape(EMBED_DIM)
            scores[i] = self.interpreter.get_tensor(self.output_index).reshape(N_CLASSES)
        return emb, scores

    def embed(self, audio_16k: np.ndarray) -> np.ndarray:
        """Mean 1024-d embedding over the clip's 0.975 s patches, float32 (1024,)."""
        return self.run(audio_16k)[0].mean(axis=0, dtype=np.float32)

    def scores(self, audio_16k: np.ndarray) -> np.ndarray:
        """Mean 521 class scores (sigmoid) over the clip's 0.975 s patches, float32 (521,)."""
        return self.run(audio_16k)[1].mean(axis=0, dtype=np.float32)


def embed_segments(segments: Iterable[np.ndarray], path: str | os.PathLike, *,
                   embedder: YamnetEmbedder | None = None, total: int | None = None,
                   progress: bool = True) -> np.ndarray:
    """(n, 1024) float32 mean embeddings of each 16 kHz segment as it is (not padded to the model
    window), cached as .npy at ``path``: read back (without touching ``segments``) when it exists."""
    path = Path(path)
    if path.is_file():
        try:
            cached = np.load(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read cached YAMNet embeddings {path}: {exc}") from None
        if cached.ndim != 2 or cached.shape[1] != EMBED_DIM:
            raise DataError(f"{path} holds an array of shape {cached.shape}, not (n, {EMBED_DIM})")
        return cached
    embedder = embedder or YamnetEmbedder()
    items = segments
    if progress:
        from tqdm import tqdm

        items = tqdm(segments, total=total, desc="segments -> YAMNet", unit="seg")
    rows = [embedder.embed(seg) for seg in items]
    out = np.stack(rows).astype(np.float32) if rows else np.zeros((0, EMBED_DIM), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_output(path) as fh:
        np.save(fh, out)
    return out


def main(argv: list[str] | None = None) -> None:
    """Embed every segment of a SourceConfig (in ``build_table`` order) into one .npy."""
    import argparse
    import time

    from stethoedge.train.sources import SourceConfig, iter_segments

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sprsound", default="../shared/data/sprsound")
    ap.add_argument("--icbhi", default="../shared/data/icbhi_train16k")
    ap.add_argument("--icbhi-test", default="../shared/data/icbhi_sample")
    ap.add_argument("--weights", default=None)
    args = ap.parse_args(argv)
    cfg = SourceConfig(sprsound=args.sprsound, icbhi=args.icbhi, icbhi_test=args.icbhi_test)
    start = time.perf_counter()
    emb = embed_segments((seg[0] for seg in iter_segments(cfg)), args.out, embedder=YamnetEmbedder(args.weights))
    print(f"{args.out}: {emb.shape} {emb.dtype} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
