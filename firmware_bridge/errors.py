"""Errors of the firmware bridge, all under the runtime's ``StethoedgeError``."""
from __future__ import annotations

from stethoedge.runtime.errors import StethoedgeError


class BridgeError(StethoedgeError):
    """A serial link that cannot be opened, read or written, or a device that went silent."""


class ProtocolError(BridgeError, ValueError):
    """Bytes that do not form a valid frame or message payload of protocol version 1."""
