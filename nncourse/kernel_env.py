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
    """A batch worker process's own cap (its verdicts' numpy and torch), the same as its kernels'.
    Libraries that start later read the variables; numpy's OpenBLAS, already loaded with the
    module that holds the worker's start, is set directly. Without it, each worker's verdicts ran
    on every core while the other workers' kernels trained."""
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    for _, set_ in openblas_libraries():
        set_(threads)


@contextlib.contextmanager
def blas_threads(count):
    """numpy's OpenBLAS at `count` threads inside the block (its setting is global to the process);
    nothing changes where OpenBLAS cannot be found."""
    lib = next(iter(openblas_libraries()), None)
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


def openblas_libraries():
    """(get_num_threads, set_num_threads) of each OpenBLAS loaded in this process (numpy's)."""
    return [lib for lib in map(_openblas, _loaded("openblas")) if lib]


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


def become_idle():
    """For a background thread that must not slow a kernel using every core: only spare CPU time
    (SCHED_IDLE: any other runnable thread preempts it). Threads it starts later (torch's OpenMP
    pool) inherit that. Returns False where SCHED_IDLE is missing."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only, on Linux
    except (AttributeError, OSError):
        return False
    return True


def is_idle():
    """Whether the calling thread runs as become_idle left it."""
    return getattr(os, "SCHED_IDLE", None) is not None and os.sched_getscheduler(0) == os.SCHED_IDLE


def become_normal(native_id=0):
    """Undo become_idle's scheduling for the thread `native_id` (0: the calling thread)."""
    try:
        os.sched_setscheduler(native_id, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):
        pass


@contextlib.contextmanager
def at_normal_priority():
    """The calling thread at normal priority inside the block, if it is idle: for work that holds the
    interpreter's lock a long time (a slow import), which an idle thread, descheduled while a kernel
    uses every core, would hold for as long, stalling the grader's other threads."""
    idle = is_idle()
    if idle:
        become_normal()
    try:
        yield
    finally:
        if idle:
            become_idle()
