"""How many threads a CPU decode uses, and how its idle threads wait: so that decoding degrades gracefully beside
another CPU-bound job instead of collapsing.

Two mechanisms, both defaults a user's own settings override:
- The wait policy. torch's CPU kernels run on OpenMP (GNU libgomp in the pip wheels). Between parallel regions its
  idle threads spin for GOMP_SPINCOUNT iterations (300,000 by default, about a millisecond) before they sleep. A
  decode step runs hundreds of short regions, so the threads spin nearly all the time; beside another busy process
  a spinning thread steals the core the work needed, and every region waits for the slowest thread (measured 24x
  slower than one thread in issue 12). `prepare_env()` sets a short spin (SPIN_COUNT, tens of microseconds: enough
  to bridge the gap between two regions of one step, not to hold a core through a stall). libgomp reads it once,
  when it loads, so this runs before torch is imported (modernlm/__init__.py calls it first thing); with
  OMP_WAIT_POLICY or GOMP_SPINCOUNT already set, nothing is changed.
- The thread count. `choose_threads()` takes the cores this process may use (its affinity mask, at most torch's
  default of one per physical core) less the cores other processes keep busy now (their share of /proc/stat over
  0.1 s, rounded; the 1-minute load average where there is no /proc), at least one; `MODERNLM_THREADS=N` (or
  `all`) overrides it. The CLI's decoding verbs call it once at start and say when they chose fewer than torch would.

This module sits on the lowest floor: it imports no torch at module level.
"""

from __future__ import annotations

import contextlib
import os
import time

SPIN_COUNT = "20000"
_torch_default: int | None = None


def prepare_env(environ: dict | None = None) -> None:
    """Set a short OpenMP spin before the runtime loads, unless the user chose a wait policy."""
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["GOMP_SPINCOUNT"] = SPIN_COUNT


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def busy_cores(window: float = 0.1) -> float:
    """Cores other processes keep busy now: the machine's busy share over a short `window` of /proc/stat (this
    process sleeps meanwhile, so it does not count itself) times the cores; where there is no /proc/stat, the
    1-minute load average (which also counts what just finished, such as an install or this process's own loading),
    and 0 where the system has neither."""
    try:
        before = _cpu_times()
        time.sleep(window)
        after = _cpu_times()
        busy, total = after[0] - before[0], after[1] - before[1]
        return (os.cpu_count() or 1) * busy / total if total > 0 else 0.0
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - idle, total


def choose_threads(requested: str | int | None = None, cores: int | None = None, busy: float | None = None) -> int:
    """Threads for decoding: `requested` (an int, "all", or None for MODERNLM_THREADS, else automatic) -> a count."""
    cores = available_cores() if cores is None else cores
    requested = os.environ.get("MODERNLM_THREADS") if requested is None else requested
    if requested not in (None, "", "auto"):
        if str(requested) == "all":
            return cores
        if not str(requested).isdigit() or int(requested) < 1:
            raise ValueError(f"MODERNLM_THREADS must be a positive integer, 'all' or 'auto', got {requested!r}")
        return int(requested)
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, cores - round(busy)))


def torch_threads() -> int:
    """torch's own thread count before apply_threads changed it (one per physical core)."""
    import torch

    global _torch_default
    if _torch_default is None:
        _torch_default = torch.get_num_threads()
    return _torch_default


def apply_threads(requested: str | int | None = None) -> int:
    """Choose the thread count (at most torch's own) and hand it to torch; returns it."""
    import torch

    n = choose_threads(requested, cores=min(available_cores(), torch_threads()))
    torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def one_thread():
    """Torch on one thread inside (a decorator too), restored after: tiny models run fastest on one thread, and far
    faster than on two on a shared, busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
