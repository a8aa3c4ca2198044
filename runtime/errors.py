"""Typed errors: every failure a user can cause maps to one of these, with a one-line message.

The CLI prints ``error: <message>`` and exits non-zero for any ``StethoedgeError``; nothing
below it should let a numpy or soundfile traceback reach the user.
"""


class StethoedgeError(Exception):
    """Base class of every error stethoedge reports to its user."""


class AudioError(StethoedgeError):
    """Audio that cannot be read or is unfit to classify (empty, corrupt, NaN, too short...)."""


class BundleError(StethoedgeError):
    """A model bundle that is missing files, tampered with, of an unknown schema, or fails its self-test."""


class DataError(StethoedgeError):
    """A dataset folder or annotation file that cannot be used for training or evaluation."""


class BackendError(StethoedgeError):
    """An inference backend that is not installed, cannot load a model, or fails while running."""


class OutputError(StethoedgeError):
    """An output (JSON lines, recordings, a bundle) that cannot be written: read-only or full disk, a race."""
