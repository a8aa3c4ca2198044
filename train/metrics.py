"""Alias of :mod:`stethoedge.data.metrics` (one module object: moved to the torch-free data layer)."""
import sys

from stethoedge.data import metrics

sys.modules[__name__] = metrics
