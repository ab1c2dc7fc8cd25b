"""Environment for grading kernels, computed by the kernel manager (sandbox.py) from its settings
when it starts each kernel; the grader's own environment is left as it is.

The notebook's test-set evaluations allocate and free 60-230 MB temporaries 41 times per
model; glibc returns them to the OS each time, so a third of the CPU goes to page faults.
jemalloc, told to keep freed pages, removes that cost (measured: 65 s -> 42 s wall for one
submission). It is used when the system has it (Debian package libjemalloc2).
"""
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
