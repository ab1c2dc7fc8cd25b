"""python -m nncourse: the command line (cli.py). A `grade` that will run its kernels in this process
(one submission, or --workers 1) first starts the kernel template that the course's last such run
used, so that it imports torch while this process imports nbgrader and reads the settings (about
1 s); the first kernel checks it against the real settings (template.KernelTemplate.of). Every
command ends without the interpreter's teardown (exit_without_teardown)."""
import argparse
import atexit
import os
import sys
import threading
from pathlib import Path


def start_kernel_template_early(argv):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--course", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--workers", "-w", type=int)
    parser.add_argument("--scheduler")
    parser.add_argument("words", nargs="*")
    try:
        args, _ = parser.parse_known_args(argv)
    except SystemExit:  # the command line itself will say what is wrong
        return
    if args.words[:1] != ["grade"] or args.scheduler:
        return
    students = args.words[1:] or [d for d in (args.course / "submitted").glob("*") if d.is_dir()]
    if len(students) == 1 or args.workers == 1:
        from .course import kernel_template_recipe
        from .template import KernelTemplate
        KernelTemplate.start_early(kernel_template_recipe(args.course))


def exit_without_teardown(code):
    """End the process as sys.exit(code) would, less the interpreter's teardown (freeing every module,
    then torch's own clean-up: 0.2-0.3 s after a grading here). The first two steps of CPython's own
    exit still run, in its order: threading's (idle thread pools are told to stop, then other
    threads are waited for) and the atexit handlers (kernel templates, worker pools, logging); then
    stdout and stderr are flushed."""
    if not isinstance(code, int):
        sys.exit(code)
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # not when a spawned worker process imports this module
    start_kernel_template_early(sys.argv[1:])
    from .cli import main
    exit_without_teardown(main())
