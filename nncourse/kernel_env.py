"""Environment for grading kernels, computed by the kernel manager (sandbox.py) from its settings
when it starts each kernel; the grader's own environment is left as it is.

The notebook's test-set evaluations allocate and free 60-230 MB temporaries 41 times per
model; glibc returns them to the OS each time, so a third of the CPU goes to page faults.
jemalloc, told to keep freed pages, removes that cost (measured: 65 s -> 42 s wall for one
submission). It is used when the system has it (Debian package libjemalloc2).
"""
import contextlib
import os
from pathlib import Path

JEMALLOC_CANDIDATES = [
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
]
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
# Read by OpenMP (and so torch), OpenBLAS, MKL and numexpr when they start.
THREAD_VARIABLES = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"]


def jemalloc_path():
    return next((p for p in JEMALLOC_CANDIDATES if Path(p).exists()), None)


def kernel_environment(environ, threads=None):
    """`environ` plus what grading kernels need: the allocator and, when several kernels share
    the machine, a cap on each one's threads."""
    env = dict(environ)
    if threads:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    lib = jemalloc_path()
    if lib and lib not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD"), lib]))
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


def cap_threads(threads):
    """A batch worker process's own cap (its verdicts' numpy and torch), the same as its kernels':
    run first in the fresh process, before those libraries start their thread pools. Without it,
    each worker's verdicts ran on every core while the other workers' kernels trained."""
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})


@contextlib.contextmanager
def blas_threads(count):
    """numpy's OpenBLAS at `count` threads inside the block (its setting is global to the process);
    nothing changes where OpenBLAS cannot be found."""
    lib = next(filter(None, map(_openblas, _loaded("openblas"))), None)
    if lib is None:
        yield
        return
    get, set_ = lib
    before = get()
    set_(count)
    try:
        yield
    finally:
        set_(before)


def _loaded(part):
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if part in line.lower() and ".so" in line})


def _openblas(path):
    import ctypes
    lib = ctypes.CDLL(path)
    prefix = "scipy_openblas" if "scipy_openblas" in path else "openblas"
    for suffix in ("", "64_"):
        get, set_ = f"{prefix}_get_num_threads{suffix}", f"{prefix}_set_num_threads{suffix}"
        if hasattr(lib, get) and hasattr(lib, set_):
            return getattr(lib, get), getattr(lib, set_)
    return None


def torch_threads():
    """The calling thread's torch thread count (importing torch): on a thread that has not run torch
    yet, the process's default, until a thread runs become_idle (see set_torch_threads)."""
    import torch
    return torch.get_num_threads()


def set_torch_threads(count):
    """Set the calling thread's torch thread count (a thread that has not run torch yet would take
    the last count any thread set: become_idle's 1)."""
    import torch
    torch.set_num_threads(count)


def become_idle():
    """For a background thread that must not slow a kernel using every core: only spare CPU time
    (SCHED_IDLE: any other runnable thread preempts it), and its own torch work on itself alone
    (OpenMP's thread count is per calling thread; also the default of threads that have not run
    torch yet, see set_torch_threads). Returns False where SCHED_IDLE is missing."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only, on Linux
    except (AttributeError, OSError):
        return False
    import torch
    torch.set_num_threads(1)
    return True


def is_idle():
    """Whether the calling thread runs as become_idle left it."""
    return getattr(os, "SCHED_IDLE", None) is not None and os.sched_getscheduler(0) == os.SCHED_IDLE


def become_normal(native_id, torch_threads=None):
    """Undo become_idle's scheduling for the thread `native_id` (0: the calling thread). Its torch
    threads stay at 1, unless the calling thread is that one and `torch_threads` says how many."""
    try:
        os.sched_setscheduler(native_id, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):
        pass
    if torch_threads and native_id == 0:
        set_torch_threads(torch_threads)
