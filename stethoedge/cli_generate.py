"""Generative-augmentation subcommands (generate, experiment)."""
from __future__ import annotations

from stethoedge.cli_common import AddCommand


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser (none yet)."""
