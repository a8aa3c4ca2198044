"""Writing outputs without destroying anything the user did not name as an output.

Every file stethoedge writes goes through this module (docs/RELIABILITY.md, "Output paths"):

* ``-`` is standard output.
* A symbolic link is followed and its target gets the content; the link stays a link. A link
  loop, or a dangling link into a missing directory, is an OutputError.
* A character device (``/dev/null``) or a FIFO is written through: opened for writing, never
  replaced by a regular file.
* A regular file, or a new one, is written to a temporary file in the same directory, flushed,
  fsynced and renamed over the target, so readers never see half of it. An existing file keeps
  its permission bits (and its owner, where the process may set it); a new one is 0644. The
  temporary is removed on any failure.
* Anything else (a directory, a block device, a socket) is refused.
* A missing parent directory is refused with its name; file outputs never create directories.
* An output that is the same file as an input (same device and inode once links are followed:
  the same path, a symlink to it or a hard link) is refused before any work.

Torch-free: the runtime, export, training and the CLI all use it.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from stethoedge.runtime.errors import OutputError

STDOUT = "-"
NEW_FILE_MODE = 0o644
#: Names of the temporaries this module creates next to a target: ``.NAME.tmp-XXXXXXXX[.SUFFIX]``.
TEMP_NAME_RE = re.compile(r"^\..+\.tmp-[A-Za-z0-9_]+(\.[A-Za-z0-9]+)?$")

PathLike = str | os.PathLike


@dataclass(frozen=True)
class OutputTarget:
    """Where an output really goes: ``kind`` is ``stdout``, ``stream`` (character device or FIFO) or ``file``."""

    given: str
    path: Path | None  # the resolved target (links followed); None for stdout
    kind: str
    existing: os.stat_result | None  # the target's stat if it exists


def is_stdout(path: PathLike | None) -> bool:
    """True for the ``-`` that means standard output."""
    return path is not None and os.fspath(path) == STDOUT


def _stat_or_none(path: Path, given: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"{given}: symbolic link loop") from None
        if exc.errno == errno.ENOTDIR:
            raise OutputError(f"{given}: a component of the path is not a directory") from None
        raise OutputError(f"{given}: cannot be used as an output ({exc.strerror or exc})") from None


def _missing_parent(given: str, p: Path, target: Path) -> OutputError:
    if os.path.islink(p):
        return OutputError(f"{given}: dangling symbolic link to {target}, whose directory {target.parent} does not exist")
    return OutputError(f"{given}: directory {p.parent} does not exist (outputs never create missing directories; "
                       "create it first)")


def resolve_output(path: PathLike) -> OutputTarget:
    """Resolve an output path by the rules above, refusing what cannot be written safely (OutputError)."""
    given = os.fspath(path)
    if given == STDOUT:
        return OutputTarget(given, None, "stdout", None)
    if not given:
        raise OutputError("an empty output path")
    p = Path(given)
    st = _stat_or_none(p, given)
    target = Path(os.path.realpath(p))
    if st is None:
        if not target.parent.is_dir():
            raise _missing_parent(given, p, target)
        kind = "file"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return OutputTarget(given, target, "stream", st)
    elif stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{given}: is a directory; name a file to write")
    else:
        raise OutputError(f"{given}: is not a regular file, a character device or a FIFO; refusing to write to it")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(target.parent) else "permission denied"
        raise OutputError(f"{given}: cannot create files in {target.parent} ({reason})")
    return OutputTarget(given, target, kind, st)


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _identity(path: PathLike | None) -> os.stat_result | None:
    """``os.stat`` (links followed) of an existing path; None for stdout, for None, or when it cannot be read."""
    if path is None or is_stdout(path):
        return None
    try:
        return os.stat(path)
    except OSError:
        return None


def refuse_same_file(output: PathLike | None, inputs: Iterable[PathLike | None]) -> None:
    """OutputError if ``output`` is the same file or directory as one of ``inputs``.

    Compared by device and inode after following links, so a symlink or a hard link to an
    input is caught too. Character devices and FIFOs are written through, never replaced, and
    are not refused; an output that does not exist yet cannot be an input.
    """
    out = _identity(output)
    if out is None or not (stat.S_ISREG(out.st_mode) or stat.S_ISDIR(out.st_mode)):
        return
    for inp in inputs:
        st = _identity(inp)
        if st is not None and (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino):
            same = "is" if os.fspath(inp) == os.fspath(output) else "is the same file as"
            raise OutputError(f"output {os.fspath(output)} {same} the input {os.fspath(inp)}; "
                              "refusing to overwrite an input (name another output)")


def check_output(path: PathLike | None, inputs: Iterable[PathLike | None] = ()) -> OutputTarget | None:
    """Validate a file output before any work: resolvable by the rules above and not one of ``inputs``."""
    if path is None:
        return None
    target = resolve_output(path)
    refuse_same_file(path, inputs)
    return target


def _contains(directory: Path, path: Path) -> bool:
    return path == directory or directory in path.parents


def check_output_dir(path: PathLike, inputs: Iterable[PathLike | None] = (), replace: bool = False) -> Path:
    """Validate a directory output before any work; returns it as a Path.

    The directory itself may be created later, but its parent must exist (no chain of missing
    directories is created). It may not be an input, nor a file. With ``replace`` (the
    directory will be replaced as a whole: export --force, generate --force) it may not contain
    an input either. A symbolic link is followed: the returned path is its target.
    """
    given = os.fspath(path)
    if not given or given == STDOUT:
        raise OutputError(f"{given or 'an empty path'}: name a directory to write")
    p = Path(given)
    st = _stat_or_none(p, given)
    if st is None:
        target = Path(os.path.realpath(p))
        if not target.parent.is_dir():
            if os.path.islink(p):
                raise _missing_parent(given, p, target)
            raise OutputError(f"{given}: its parent directory {p.parent} does not exist (only the output directory "
                              "itself is created; create its parent first)")
    elif not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{given}: exists and is not a directory")
    refuse_same_file(p, inputs)
    if replace:
        here = Path(os.path.realpath(p))
        for inp in inputs:
            if inp is not None and not is_stdout(inp) and _contains(here, Path(os.path.realpath(inp))):
                raise OutputError(f"{given}: contains the input {os.fspath(inp)}; refusing to replace it")
    return Path(os.path.realpath(p)) if os.path.islink(p) else p


def is_temporary_name(name: str) -> bool:
    """True for the name of a temporary this module writes next to a target (a crash may leave one)."""
    return bool(TEMP_NAME_RE.match(name))


def _error(target: OutputTarget, exc: OSError) -> OutputError:
    if isinstance(exc, BrokenPipeError):
        return OutputError(f"{target.given}: the reader went away before the output was complete")
    return OutputError(f"{target.given}: cannot write ({exc.strerror or exc})")


def _keep_mode(fd_or_path: int | str, target: OutputTarget, new_mode: int = NEW_FILE_MODE) -> None:
    """Give a temporary the existing target's permission bits (and owner, if allowed), or ``new_mode``."""
    st = target.existing
    chmod = os.fchmod if isinstance(fd_or_path, int) else os.chmod
    chmod(fd_or_path, stat.S_IMODE(st.st_mode) if st is not None else new_mode)
    if st is not None and (st.st_uid != os.geteuid() or st.st_gid != os.getegid()):
        chown = os.fchown if isinstance(fd_or_path, int) else os.chown
        try:
            chown(fd_or_path, st.st_uid, st.st_gid)
        except OSError:
            pass  # not allowed (not root): the file becomes ours, as any rewrite would make it


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


class OutputFile:
    """One output being written: ``file`` is open for writing; ``commit()`` publishes, ``discard()`` drops.

    A regular (or new) file is a temporary renamed over the target on ``commit``; a device or a
    FIFO is written directly; stdout is flushed, never closed.
    """

    def __init__(self, path: PathLike, text: bool = False, encoding: str = "utf-8",
                 inputs: Iterable[PathLike | None] = (), new_mode: int = NEW_FILE_MODE) -> None:
        self.target = check_output(path, inputs)
        assert self.target is not None
        self._tmp: str | None = None
        t = self.target
        try:
            if t.kind == "stdout":
                self.file: IO = sys.stdout if text else sys.stdout.buffer
                return
            if t.kind == "stream":
                fd = os.open(t.path, os.O_WRONLY | os.O_CLOEXEC)
            else:
                fd, self._tmp = tempfile.mkstemp(dir=t.path.parent, prefix=_temp_prefix(t.path))
                try:
                    _keep_mode(fd, t, new_mode)
                except OSError:
                    os.close(fd)
                    raise
            self.file = os.fdopen(fd, "w" if text else "wb", **({"encoding": encoding} if text else {}))
        except OSError as exc:
            self._drop_tmp()
            raise _error(t, exc) from None

    @property
    def name(self) -> str:
        """The path being written now (the temporary for a regular file)."""
        return self._tmp or os.fspath(self.target.path or STDOUT)

    def _drop_tmp(self) -> None:
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None

    def commit(self) -> None:
        """Finish: flush, fsync and rename a temporary over the target (or just flush a stream)."""
        try:
            self.file.flush()
            if self.target.kind == "stdout":
                return
            if self._tmp is not None:
                os.fsync(self.file.fileno())
            self.file.close()
            if self._tmp is not None:
                os.replace(self._tmp, self.target.path)
                self._tmp = None
        except OSError as exc:
            self.discard()
            raise _error(self.target, exc) from None

    def discard(self) -> None:
        """Give up: close, and remove a temporary (the target is left as it was). Safe to call twice."""
        if self.target.kind != "stdout":
            try:
                self.file.close()
            except (OSError, ValueError):
                pass
        self._drop_tmp()


@contextmanager
def open_output(path: PathLike, mode: str = "wb", encoding: str = "utf-8",
                inputs: Iterable[PathLike | None] = (), new_mode: int = NEW_FILE_MODE) -> Iterator[IO]:
    """A file object for ``path`` (mode ``"w"`` or ``"wb"``), published on a clean exit.

    An OSError raised while writing becomes an OutputError naming the output; any exception
    leaves the target as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"open_output mode must be 'w' or 'wb', got {mode!r}")
    out = OutputFile(path, text=mode == "w", encoding=encoding, inputs=inputs, new_mode=new_mode)
    try:
        yield out.file
    except OSError as exc:
        out.discard()
        raise _error(out.target, exc) from None
    except BaseException:
        out.discard()
        raise
    out.commit()


def atomic_write_bytes(path: PathLike, data: bytes, new_mode: int = NEW_FILE_MODE,
                       inputs: Iterable[PathLike | None] = ()) -> None:
    """Write ``data`` to ``path`` by the rules above (temporary + rename for a regular file;
    ``new_mode``: the permission bits of a file that did not exist)."""
    with open_output(path, "wb", new_mode=new_mode, inputs=inputs) as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8",
                      inputs: Iterable[PathLike | None] = ()) -> None:
    """Write ``text`` to ``path`` by the rules above, so readers never see half of it."""
    with open_output(path, "w", encoding=encoding, inputs=inputs) as f:
        f.write(text)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def output_path(path: PathLike, inputs: Iterable[PathLike | None] = ()) -> Iterator[Path]:
    """A not-yet-existing temporary *path* (same name and suffix as ``path``) for libraries that want a
    file name (soundfile, matplotlib, torch.save, converters); published on a clean exit.

    For a regular or new file the temporary lives in a private directory beside the target and is
    renamed over it; for a device, a FIFO or stdout it lives in the system's temporary directory
    and is copied into the stream.
    """
    target = check_output(path, inputs)
    assert target is not None
    try:
        if target.kind == "file":
            workdir = tempfile.mkdtemp(dir=target.path.parent, prefix=_temp_prefix(target.path))
            name = target.path.name
        else:
            workdir = tempfile.mkdtemp(prefix="stethoedge-out-")
            name = Path(target.given).name if target.kind == "stream" else "stdout"
    except OSError as exc:
        raise _error(target, exc) from None
    tmp = Path(workdir) / name
    try:
        try:
            yield tmp
            if not tmp.is_file():
                raise OutputError(f"{target.given}: nothing was written")
            if target.kind == "file":
                _keep_mode(str(tmp), target)
                _fsync_path(str(tmp))
                os.replace(tmp, target.path)
            else:
                _copy_into_stream(tmp, target)
        except OSError as exc:
            raise _error(target, exc) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _copy_into_stream(src: Path, target: OutputTarget) -> None:
    with open(src, "rb") as fin:
        if target.kind == "stdout":
            sys.stdout.flush()
            shutil.copyfileobj(fin, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        fd = os.open(target.path, os.O_WRONLY | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout)


def open_append(path: PathLike, inputs: Iterable[PathLike | None] = ()) -> IO[str]:
    """A text file object appending to ``path`` (a log: listen's JSON lines); stdout for ``-``.

    Links are followed, devices and FIFOs written through, a missing directory refused.
    """
    target = check_output(path, inputs)
    assert target is not None
    if target.kind == "stdout":
        return sys.stdout
    try:
        fd = os.open(target.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
                     | (os.O_CREAT if target.kind == "file" else 0), NEW_FILE_MODE)
        return os.fdopen(fd, "a", encoding="utf-8")
    except OSError as exc:
        raise _error(target, exc) from None


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM/SIGINT for the block; they are delivered right after it.

    For steps that cannot be unwound halfway: numpy writing a zip archive (an exception inside savez
    leaves an open handle and a traceback from ZipFile.__del__), or creating a temporary and binding
    it to the name a ``finally`` cleans up (a signal in between would leak the temporary).
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def temp_dir_beside(out: Path) -> Path:
    """A new directory next to ``out`` (same file system, mode 0755) to build a directory output in.

    Its name matches ``TEMP_NAME_RE``; ``install_dir`` moves it into place.
    """
    try:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=_temp_prefix(out)))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a device's service user must read what is installed
    except OSError as exc:
        raise OutputError(f"{out}: cannot create a directory beside it ({exc.strerror or exc})") from None
    return tmp


def install_dir(tmp: Path, out: Path, replace: bool = False, what: str = "this command") -> None:
    """Move the finished directory ``tmp`` to ``out``.

    An existing ``out`` is replaced only with ``replace`` (the user named it and asked, e.g.
    --force): it is renamed aside, ``tmp`` renamed in, then the old one deleted. Without it, or
    when ``out`` appears meanwhile, OutputError and ``out`` is left as is.
    """
    if os.path.lexists(out) and not replace:
        raise OutputError(f"{out} already exists; pass --force to replace it")
    if os.path.lexists(out):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError as exc:
            raise OutputError(f"{out} appeared while {what} ran ({exc.strerror}); the replaced one is kept as "
                              f"{old}") from None
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(tmp, out)
    except OSError as exc:  # another run installed ``out`` after our check (a non-empty directory)
        raise OutputError(f"{out} appeared while {what} ran (another run into the same place?); "
                          f"it was left as is ({exc.strerror})") from None


def files_under(path: PathLike | None) -> list[Path]:
    """``path`` itself plus, for a directory, every file below it: the inputs a folder argument
    stands for (a bundle), to compare outputs against."""
    if path is None or is_stdout(path):
        return []
    p = Path(path)
    return [p, *(f for f in p.rglob("*") if f.is_file())] if p.is_dir() else [p]
