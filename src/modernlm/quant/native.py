"""The small C++ kernels of `native/qgemv.cpp`: 4-bit and 8-bit weights times int8 activations, for decoding.

torch's fused int4/int8 CPU kernels are built for throughput; at batch 1 they read the weights far below the memory
ceiling. These do what llama.cpp does: x is rounded to int8 in blocks of 32 (one float scale a block), and each
block's product with the weight's codes is an integer dot product (AVX-512 VNNI, or AVX2), scaled once per block.
They take batches of up to `MAX_ROWS` rows; larger ones (prefill) go to torch's kernels (kernels.py).

Opt-in: `MODERNLM_QUANT_KERNEL=native` (the default, `torch`, was faster where measured; see `enabled`). Built once
per machine with torch's C++ extension builder (g++ and ninja, `-O3 -march=native`) into `$MODERNLM_CACHE/native/`
(default `~/.cache/modernlm/native/`), by `python -m modernlm.quant` or the first quantized decode step, with a
notice. Where it cannot build (no compiler), torch's kernels run instead, with a notice once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path

import torch

log = logging.getLogger("modernlm")
SOURCE = Path(__file__).parent / "native" / "qgemv.cpp"
MAX_ROWS = 8  # rows of x the kernels take together
BLOCK = 32  # inputs per activation block
_module = None
_failed: str | None = None


def enabled() -> bool:
    """Opt-in (`MODERNLM_QUANT_KERNEL=native`): measured on an idle AVX-512 VNNI CPU, these decode SmolLM2 at 0.6x the
    speed of torch's fused kernels (23.9 vs 39.9 tok/s int4, BENCHMARKS.md), the custom operator's per-call cost
    over 211 products a token outweighing the integer dot products, and their int8 activations agree less often
    with fp32's greedy tokens. Kept, tested, for the work that would make them pay (a fused C++ decode step)."""
    choice = os.environ.get("MODERNLM_QUANT_KERNEL", "torch")
    if choice not in ("native", "torch"):
        raise ValueError(f"MODERNLM_QUANT_KERNEL must be native or torch, got {choice!r}")
    return choice == "native"


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next((line for line in text.splitlines() if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def build_directory() -> Path:
    """Where the extension is built: one directory per source, torch version and CPU (it is built -march=native)."""
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + _cpu_flags().encode()).hexdigest()[:12]
    root = Path(os.environ.get("MODERNLM_CACHE", Path.home() / ".cache" / "modernlm"))
    return root / "native" / f"qgemv-{key}"


def load(build: bool = True):
    """The compiled module, or None where it cannot be built or is switched off (a notice says why, once)."""
    global _module, _failed
    if not enabled():
        return None
    if _module is not None or _failed is not None:
        return _module
    directory = build_directory()
    if not build and not any(directory.glob("*.so")):
        return None
    try:
        if not any(directory.glob("*.so")):
            log.info("building modernlm's quantized decode kernels once for this CPU (about a minute)...")
        _module = compile_module(directory, "-march=native")
    except Exception as e:  # no compiler, no ninja, a failed build: torch's kernels do the work
        _failed = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300]
        log.info("modernlm's quantized decode kernels could not be built (%s); using torch's kernels", _failed)
        return None
    return _module


def compile_module(directory: Path, march: str, name: str = "modernlm_qgemv"):
    """Build (or load, if built) the extension for the instruction set `march` names (e.g. -march=native, or
    -march=haswell for the AVX2 path, -march=x86-64 for the plain loop, as the tests do) in `directory`."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime": not needed here
    from torch.utils.cpp_extension import load as build_extension

    directory.mkdir(parents=True, exist_ok=True)
    return build_extension(
        name=name, sources=[str(SOURCE)], extra_cflags=["-O3", march], build_directory=str(directory), verbose=False
    )


def usable(x: torch.Tensor, in_features: int) -> bool:
    """Whether a product with x (M, K) runs here: a small CPU batch, whole blocks, the module built."""
    return x.device.type == "cpu" and x.shape[0] <= MAX_ROWS and in_features % BLOCK == 0 and load() is not None


def quantize_rows(x: torch.Tensor):
    """x (M, K) -> int8 codes (M, K) in [-127, 127], block scales (M, K/32), block sums x scale (M, K/32)."""
    return _module.quantize_rows(x.float().contiguous())


def dequantize_rows(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float values the kernels multiply: codes x their block's scale (M, K)."""
    M, K = codes.shape
    return (codes.float().reshape(M, K // BLOCK, BLOCK) * scales[..., None]).reshape(M, K)


def int4_layout(weight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An Int4Weight as the kernel reads it: 16 bytes a block (code j low, code j + 16 high), and a scale and a
    minimum (the value of code 0) for every block of 32 inputs."""
    N, K = weight.out_features, weight.in_features
    codes = weight.codes().reshape(N, K // BLOCK, 2, 16)
    packed = (codes[:, :, 0] | (codes[:, :, 1] << 4)).reshape(N, K // 2).contiguous()
    repeat = weight.group_size // BLOCK
    scales = weight.scales.float().repeat_interleave(repeat, 1).contiguous()  # (N, K/32)
    mins = (weight.zeros.float().repeat_interleave(repeat, 1) - 8 * scales).contiguous()
    return packed, scales, mins


def int8_layout(weight) -> tuple[torch.Tensor, torch.Tensor]:
    """An Int8Weight as the kernel reads it: the codes, and a scale for every block of 32 inputs."""
    group = weight.in_features if weight.group_size is None else weight.group_size
    return weight.qweight.contiguous(), weight.scales.float().repeat_interleave(group // BLOCK, 1).contiguous()


# The products as torch operators (torch.library), so a compiled decode step (generation/compiled.py) calls them as
# single opaque ops instead of breaking its graph at every layer.
@torch.library.custom_op("modernlm::q4_matmul", mutates_args=())
def _q4(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    codes, x_scales, sums = quantize_rows(x)
    return _module.q4_matmul(codes, x_scales, sums, packed, scales, mins)


@torch.library.custom_op("modernlm::q8_matmul", mutates_args=())
def _q8(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    x_codes, x_scales, _ = quantize_rows(x)
    return _module.q8_matmul(x_codes, x_scales, codes, scales)


@_q4.register_fake
def _(x, packed, scales, mins):
    return x.new_empty(x.shape[0], packed.shape[0], dtype=torch.float32)


@_q8.register_fake
def _(x, codes, scales):
    return x.new_empty(x.shape[0], codes.shape[0], dtype=torch.float32)


def int4_matmul(layout, x: torch.Tensor) -> torch.Tensor:  # (M, K) -> (M, N) float32
    return _q4(x.float().contiguous(), *layout)


def int8_matmul(layout, x: torch.Tensor) -> torch.Tensor:  # (M, K) -> (M, N) float32
    return _q8(x.float().contiguous(), *layout)


def isa() -> str | None:
    return None if _module is None else _module.isa()


def main() -> int:
    """`python -m modernlm.quant`: build the kernels now (`make setup` does) and say what they use."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    module = load()
    print(f"modernlm quantized decode kernels: {module.isa() if module else 'not built (' + str(_failed) + ')'}")
    return 0
