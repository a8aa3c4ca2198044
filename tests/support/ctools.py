"""Building the C reference (``c/``) with the system compiler, for tests and benchmarks.

``build()`` compiles ``example_firmware`` and ``bridge_vectors`` with the strict flags the
reference promises to pass (C99, -Wall -Wextra -Werror -pedantic) into a temporary directory,
once per process and source/compiler combination.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import stethoedge.firmware_bridge as _bridge

C_DIR = Path(_bridge.__file__).resolve().parent / "c"  # shipped with the package (package_data)
LIBRARY = ("seb_proto.c", "seb_cobs.c", "seb_crc32.c", "seb_adpcm.c")
STRICT_FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic")

_cache: dict[str, "CBuild"] = {}


@dataclass(frozen=True)
class CBuild:
    """Paths of the compiled C programs."""

    directory: Path
    example_firmware: Path
    bridge_vectors: Path
    compiler: str


def find_compiler() -> str | None:
    """$CC if set and found, else the first of cc, gcc, clang on PATH."""
    env = os.environ.get("CC")
    candidates = ([env] if env else []) + ["cc", "gcc", "clang"]
    for name in candidates:
        path = shutil.which(name.split()[0]) if name else None
        if path:
            return path
    return None


def build(extra_flags: tuple[str, ...] = ()) -> CBuild:
    """Compile the C reference; raises RuntimeError with the compiler output if it fails."""
    compiler = find_compiler()
    if compiler is None:
        raise FileNotFoundError("no C compiler found (looked for $CC, cc, gcc, clang)")
    digest = hashlib.sha256(compiler.encode() + repr(extra_flags).encode())
    for src in sorted(C_DIR.glob("*.[ch]")):
        digest.update(src.name.encode() + src.read_bytes())
    key = digest.hexdigest()
    if key in _cache and _cache[key].example_firmware.exists():
        return _cache[key]
    out = Path(tempfile.mkdtemp(prefix="seb-c-"))
    atexit.register(shutil.rmtree, out, True)
    units = [*LIBRARY, "example_firmware.c", "bridge_vectors.c"]
    # Compile every unit once, in parallel, then link the two programs.
    jobs = []
    for unit in units:
        obj = out / unit.replace(".c", ".o")
        cmd = [compiler, *STRICT_FLAGS, *extra_flags, "-I", str(C_DIR), "-c", "-o", str(obj), str(C_DIR / unit)]
        jobs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for cmd, proc in jobs:
        output = proc.communicate()[0]
        if proc.returncode != 0:
            raise RuntimeError(f"compiling failed:\n{' '.join(cmd)}\n{output}")
    lib = [str(out / unit.replace(".c", ".o")) for unit in LIBRARY]
    programs = {}
    for program in ("example_firmware", "bridge_vectors"):
        target = out / program
        cmd = [compiler, *STRICT_FLAGS, *extra_flags, "-o", str(target), str(out / f"{program}.o"), *lib]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"linking {program} failed:\n{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        programs[program] = target
    result = CBuild(out, programs["example_firmware"], programs["bridge_vectors"], compiler)
    _cache[key] = result
    return result
