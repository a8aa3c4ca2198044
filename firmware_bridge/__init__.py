"""stethoedge.firmware_bridge: wire protocol and host side between stethoscope firmware and the runtime.

Modules (one job each):

* ``protocol``      constants of protocol version 1 (header layout, limits, codes)
* ``crc``, ``cobs``, ``adpcm``   the CRC-32, byte stuffing and IMA ADPCM codec
* ``framing``       frames on a byte stream: ``encode_frame``, ``FrameDecoder``
* ``messages``      message dataclasses with pack/unpack
* ``sequencer``     AUDIO frames -> gap-annotated 16 kHz ``AudioChunk``s
* ``serial_source`` ``BridgeSource``: a serial port as a runtime ``AudioSource``
* ``device_simulator``, ``links``   a Python device, pty pairs, byte links
* ``cli``           ``stethoedge bridge simulate|decode``
* ``c/``            the C reference for firmware; ``PROTOCOL.md`` the specification

Importing the package is cheap; the names below load their module on first use.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "BridgeSource": "serial_source",
    "BridgeStats": "serial_source",
    "BridgeError": "errors",
    "ProtocolError": "errors",
    "FrameDecoder": "framing",
    "encode_frame": "framing",
    "PROTOCOL_VERSION": "protocol",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
