"""Alias of :mod:`stethoedge.data.folders` (one module object: moved to the torch-free data layer)."""
import sys

from stethoedge.data import folders

sys.modules[__name__] = folders
