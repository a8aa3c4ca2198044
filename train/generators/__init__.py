"""Class-conditional generators of respiratory-cycle log-mels (and a vocoder) behind one interface."""
from stethoedge.train.generators.base import MelGenerator, MelSet
from stethoedge.train.generators.registry import GENERATORS, MEL_KINDS, create, load

__all__ = ["GENERATORS", "MEL_KINDS", "MelGenerator", "MelSet", "create", "load"]
