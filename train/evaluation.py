"""Alias of :mod:`stethoedge.data.evaluation` (one module object: moved to the torch-free data layer)."""
import sys

from stethoedge.data import evaluation

sys.modules[__name__] = evaluation
