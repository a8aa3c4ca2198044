"""Generator kinds by name: ``create(kind, **config)``, ``load(path)``."""
from __future__ import annotations

import os
from typing import Any

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.train.generators.base import MelGenerator, read_generator_file
from stethoedge.train.generators.ddpm import DDPMGenerator
from stethoedge.train.generators.diffwave import DiffWaveVocoder
from stethoedge.train.generators.se_cgan import SECGANGenerator
from stethoedge.train.generators.vae import VAEGenerator
from stethoedge.train.generators.wgan_gp import WGANGPGenerator

GENERATORS: dict[str, type[MelGenerator]] = {
    cls.kind: cls for cls in (VAEGenerator, WGANGPGenerator, SECGANGenerator, DDPMGenerator, DiffWaveVocoder)
}
#: Kinds that generate mels from noise (the vocoder only re-synthesises).
MEL_KINDS: tuple[str, ...] = ("vae", "wgan-gp", "se-cgan", "ddpm")


def generator_class(kind: str) -> type[MelGenerator]:
    """The class registered under ``kind``; unknown kinds are a DataError."""
    if kind not in GENERATORS:
        raise DataError(f"unknown generator kind {kind!r}; choose from {', '.join(GENERATORS)}")
    return GENERATORS[kind]


def create(kind: str, spec: FeatureSpec | None = None, **config: Any) -> MelGenerator:
    """A new generator of ``kind`` with config fields overridden by ``config``."""
    cls = generator_class(kind)
    try:
        cfg = cls.config_class(**config)
    except TypeError as exc:
        raise DataError(f"{kind}: bad configuration ({exc})") from None
    return cls(cfg, spec)


def load(path: str | os.PathLike) -> MelGenerator:
    """Rebuild any generator from its checkpoint file."""
    payload = read_generator_file(path)
    return generator_class(payload["kind"]).from_state(payload)
