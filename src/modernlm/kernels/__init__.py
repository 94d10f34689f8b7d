"""Optional CPU kernels, built once with the system C++ compiler and cached; each has a plain PyTorch twin.

`rowdot(x, w)` computes x @ w.T for a few rows of x (decode steps): it streams the weights once at close to the
memory bandwidth, where torch's GEMV reaches about a fifth of it (see shared/MEASUREMENTS.md). `linear()` uses it
when it is built and switched on (`use_kernels()`), and F.linear otherwise, so results never depend on the build.

Build: `modernlm kernels build` (the README's setup does it); a build takes ~25 s, a cached load ~0.01 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("rowdot.cpp")
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
MAX_ROWS = 16  # above this many input rows a GEMM is as good as streaming the weights
_state = {"module": None, "enabled": False}


def _build_dir() -> Path:
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    key = "|".join([SOURCE.read_text(), torch.__version__, sys.version, platform.machine(), cpu, *CFLAGS])
    root = Path(os.environ.get("MODERNLM_CACHE", Path.home() / ".cache" / "modernlm"))
    return root / "kernels" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _so_path() -> Path | None:
    found = sorted(_build_dir().glob("modernlm_rowdot*.so"))
    return found[0] if found else None


def _import(path: Path):
    spec = importlib.util.spec_from_file_location("modernlm_rowdot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(verbose: bool = False):
    """Compile the kernels (or load the cached build). Raises RuntimeError naming what is missing."""
    if _state["module"] is not None:
        return _state["module"]
    path = _so_path()
    if path is None:
        from torch.utils.cpp_extension import load

        directory = _build_dir()
        directory.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("CUDA_HOME", "/nonexistent")  # a CPU-only build; skips the CUDA probe's warning
        try:
            load(
                "modernlm_rowdot",
                [str(SOURCE)],
                extra_cflags=CFLAGS,
                extra_ldflags=["-fopenmp"],
                build_directory=str(directory),
                verbose=verbose,
            )
        except Exception as e:  # compiler missing, headers missing, ninja missing: all mean "no kernels here"
            raise RuntimeError(
                f"building the CPU kernels failed ({type(e).__name__}: {e}); modernlm still works "
                "without them (plain PyTorch). Needs a C++ compiler (g++) and ninja"
            ) from e
        path = _so_path()
    _state["module"] = _import(path)
    return _state["module"]


def available() -> bool:
    """True when the kernels are built (cached) and load; never compiles."""
    if _state["module"] is None and _so_path() is not None:
        with contextlib.suppress(Exception):
            _state["module"] = _import(_so_path())
    return _state["module"] is not None


@contextlib.contextmanager
def use_kernels(enabled: bool = True):
    """Within the block, small-batch inference linears use the built kernels (when available)."""
    previous = _state["enabled"]
    _state["enabled"] = enabled and available()
    try:
        yield _state["enabled"]
    finally:
        _state["enabled"] = previous


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through `rowdot` for a few rows of inference input when the kernels are switched on."""
    if not _state["enabled"] or x.device.type != "cpu" or torch.is_grad_enabled() or weight.dtype not in _WEIGHT_DTYPES:
        return F.linear(x, weight, bias)
    rows = x.numel() // x.shape[-1]
    if rows > MAX_ROWS or not weight.is_contiguous():
        return F.linear(x, weight, bias)
    if x.dtype not in _WEIGHT_DTYPES:
        return F.linear(x, weight, bias)
    y = _state["module"].rowdot(x.reshape(rows, -1).contiguous(), weight)  # (rows, N) in x's dtype
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], weight.shape[0])


_WEIGHT_DTYPES = (torch.float32, torch.bfloat16)
