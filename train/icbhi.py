"""Alias of :mod:`stethoedge.data.icbhi` (one module object: moved to the torch-free data layer)."""
import sys

from stethoedge.data import icbhi

sys.modules[__name__] = icbhi
