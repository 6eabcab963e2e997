"""C kernels for CPU training, compiled on this machine the first time they are needed.

A kernel is a C file next to this module, built with the machine's C compiler (`$CC`, else
`cc`) for the CPU it runs on (`-O3 -march=native`) and loaded with ctypes: no torch
headers, no build step at install time, nothing to download. The shared library is cached
under `$QKOV_CACHE/kernels/` (default `~/.cache/qkov/kernels/`), named by a hash of the
source, the flags, the compiler's version, the CPU's instruction sets (a cache shared by
machines of different CPUs never loads code built for another) and the specialisation
(`-DDH=32`), and written
to a temporary name then renamed, so concurrent builds cannot load a half-written file.

Where no compiler or OpenMP is available, or `QKOV_KERNELS=0`, `load` returns None and the
caller falls back to PyTorch (`reason()` says why). The library is linked against OpenMP by
its soname, `libgomp.so.1`, which torch has already loaded: the kernels run on torch's own
thread pool (`torch.set_num_threads`), not a second one competing for the cores. A kernel
that multiplies matrices calls torch's own MKL (`blas()`: its `sgemm_`, passed in as a
function pointer), never a BLAS of its own.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["blas", "compiler", "load", "pointer", "reason"]

HERE = Path(__file__).parent
# No -ffast-math: the kernels vectorise their own exp and reductions (OpenMP simd), and
# float semantics stay IEEE (a -ffast-math library can also set flush-to-zero process-wide).
COMPILE_FLAGS = ["-O3", "-march=native", "-fPIC", "-fopenmp"]
LINK_FLAGS = ["-shared", "-fopenmp"]

_loaded: dict[tuple[str, tuple[str, ...]], ctypes.CDLL | None] = {}
_reasons: dict[tuple[str, tuple[str, ...]], str] = {}


def compiler() -> str | None:
    """The C compiler the kernels are built with (`$CC`, else `cc`), or None if not found."""
    cc = os.environ.get("CC", "cc")
    return shutil.which(cc)


def _cpu() -> str:
    """What `-march=native` builds for: the CPU's model and instruction-set flags."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(
            next((line for line in info if line.startswith(key)), "")
            for key in ("model name", "flags")
        )
    except OSError:
        return platform.machine() + platform.processor()


def _cache_dir() -> Path:
    from qkov.data.dataset import default_cache_dir

    return default_cache_dir() / "kernels"


def _build(name: str, defines: tuple[str, ...]) -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("QKOV_KERNELS", "1") == "0":
        return None, "QKOV_KERNELS=0"
    cc = compiler()
    if cc is None:
        return None, "no C compiler (set CC, or install gcc)"
    source = HERE / f"{name}.c"
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{cc} --version failed: {e}"
    flags = [f"-D{d}" for d in defines]
    headers = [h.read_text() for h in sorted(HERE.glob("*.h"))]  # what the sources include
    key = hashlib.sha256(
        "\0".join(
            [
                source.read_text(),
                *headers,
                *COMPILE_FLAGS,
                *LINK_FLAGS,
                *flags,
                version.stdout,
                _cpu(),
            ]
        ).encode()
    ).hexdigest()[:16]
    out = _cache_dir() / ("-".join([name, *defines, key]) + ".so")
    if not out.exists():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                obj, lib = Path(tmp) / f"{name}.o", Path(tmp) / f"{name}.so"
                for cmd in (
                    [cc, *COMPILE_FLAGS, *flags, "-c", str(source), "-o", str(obj)],
                    [cc, *LINK_FLAGS, str(obj), "-o", str(lib), "-lm"],
                ):
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                    if done.returncode != 0:
                        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
                        return None, f"{' '.join(cmd[:2])} ... failed: {last}"
                os.replace(lib, out)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"could not build {out.name}: {e}"
    try:
        return ctypes.CDLL(str(out)), ""
    except OSError as e:
        return None, f"could not load {out}: {e}"


def load(name: str, defines: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The compiled kernel `name` (src/qkov/kernels/<name>.c) with these `-D` defines
    (e.g. ("DH=32",)), built on first use and cached; None where it cannot be built here."""
    key = (name, defines)
    if key not in _loaded:
        _loaded[key], _reasons[key] = _build(name, defines)
    return _loaded[key]


_blas: list[tuple[ctypes.c_void_p, ctypes.c_void_p] | None] = []


def blas() -> tuple[ctypes.c_void_p, ctypes.c_void_p] | None:
    """torch's own MKL, for a kernel that calls BLAS from its threads: the addresses of
    `sgemm_` (Fortran interface) and `MKL_Set_Num_Threads_Local` (the calling thread's
    thread count), found in torch's libtorch_cpu; None where torch is not built with MKL
    (the caller keeps PyTorch's matmuls) or with `QKOV_KERNELS=0`."""
    if os.environ.get("QKOV_KERNELS", "1") == "0":
        return None
    if not _blas:
        import torch

        found = None
        if torch.backends.mkl.is_available():
            path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
            try:
                lib = ctypes.CDLL(str(path))
                found = (
                    ctypes.cast(lib.sgemm_, ctypes.c_void_p),
                    ctypes.cast(lib.MKL_Set_Num_Threads_Local, ctypes.c_void_p),
                )
            except (OSError, AttributeError):  # another platform's library, or no symbol
                found = None
        _blas.append(found)
    return _blas[0]


def pointer(x) -> ctypes.c_void_p:
    """A tensor's data address, as a kernel's `float *` / `long long *` argument (the
    caller checks dtype, device and layout)."""
    return ctypes.c_void_p(x.data_ptr())


def reason(name: str, defines: tuple[str, ...] = ()) -> str:
    """Why `load(name, defines)` returned None ("" if it did not, or was not called)."""
    return _reasons.get((name, defines), "")
