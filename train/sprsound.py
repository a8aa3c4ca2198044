"""Alias of :mod:`stethoedge.data.sprsound` (one module object: moved to the torch-free data layer)."""
import sys

from stethoedge.data import sprsound

sys.modules[__name__] = sprsound
