"""Byte links for the device side: a pyserial port, a raw file descriptor, a pseudo-terminal pair.

The host side (``BridgeSource``) talks to pyserial directly. The device simulator, the tests and
the benchmark also need the *other* end of a link: ``PtyPair`` makes a pseudo-terminal whose
slave name pyserial opens like any serial device, while the simulator writes to the master fd.
"""
from __future__ import annotations

import os
import select
import time
from typing import Protocol

from stethoedge.firmware_bridge.errors import BridgeError


class Link(Protocol):
    """What the device simulator needs from a byte link."""

    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float) -> bytes:
        """Bytes available within ``timeout`` seconds (``b""`` if none); never blocks longer."""
        ...

    def close(self) -> None: ...


class FdLink:
    """A link over an OS file descriptor (a pty master, a pipe end, a socket)."""

    def __init__(self, fd: int, read_fd: int | None = None, close_fds: bool = False) -> None:
        self.fd = fd
        self.read_fd = fd if read_fd is None else read_fd
        self._close_fds = close_fds
        self._closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                select.select([], [self.fd], [], 0.1)
                continue
            except OSError as exc:
                raise BridgeError(f"write to link failed: {exc.strerror or exc}") from None
            view = view[n:]

    def read(self, timeout: float) -> bytes:
        try:
            ready, _, _ = select.select([self.read_fd], [], [], max(0.0, timeout))
            if not ready:
                return b""
            return os.read(self.read_fd, 65536)
        except OSError:  # EIO on a pty master once the slave side is gone: nothing to read
            if timeout > 0:
                time.sleep(min(timeout, 0.01))
            return b""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._close_fds:
            for fd in {self.fd, self.read_fd}:
                try:
                    os.close(fd)
                except OSError:
                    pass


class SerialLink:
    """A link over a pyserial port (a real UART/USB CDC device, or the slave side of a pty)."""

    def __init__(self, port: str, baud: int = 921600) -> None:
        import serial

        try:
            if "://" in port:
                self._ser = serial.serial_for_url(port, baudrate=baud, timeout=0, write_timeout=5.0)
            else:
                self._ser = serial.Serial(port, baudrate=baud, timeout=0, write_timeout=5.0)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise BridgeError(f"cannot open {port}: {exc}") from None
        self.port = port
        self._serial_exception = serial.SerialException

    def write(self, data: bytes) -> None:
        try:
            self._ser.write(data)
        except (self._serial_exception, OSError) as exc:
            raise BridgeError(f"{self.port}: write failed: {exc}") from None

    def read(self, timeout: float) -> bytes:
        deadline = time.monotonic() + max(0.0, timeout)
        try:
            while True:
                waiting = self._ser.in_waiting
                if waiting:
                    return self._ser.read(waiting)
                left = deadline - time.monotonic()
                if left <= 0:
                    return b""
                time.sleep(min(left, 0.002))
        except (self._serial_exception, OSError) as exc:
            raise BridgeError(f"{self.port}: read failed: {exc}") from None

    def close(self) -> None:
        self._ser.close()


class PtyPair:
    """A raw pseudo-terminal pair: ``slave_name`` for pyserial, ``master`` fd for the device side.

    Both ends are put in raw mode (no echo, no CR/LF translation, no flow control) right away, so
    binary frames cross unchanged even before pyserial configures the slave.
    """

    def __init__(self) -> None:
        import tty  # POSIX only; imported here so the rest of this module loads anywhere

        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self.master)
        self.slave_name = os.ttyname(self._slave)
        self._closed = False

    def link(self) -> FdLink:
        """The device side as a Link (the master fd; not closed by the link)."""
        return FdLink(self.master)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._slave, self.master):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> PtyPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_link(port: str, baud: int = 921600) -> Link:
    """A Link to a serial device path or pyserial URL."""
    return SerialLink(port, baud)
