"""Where one `python -m nncourse grade` spends its time: the seconds, from the process's start, at
which the driver reaches each step, the kernel template is ready, the kernel starts each training
cell, and the last cell ends. For the side-by-side figures in docs/benchmark.md.

    .venv/bin/python bench/timeline.py --course DIR grade STUDENT --force

takes the same arguments as `python -m nncourse` and prints the timeline to stderr at the end
(with whether the grader had imported torch when the notebook started and when its verdicts were
done). It wraps functions only, and ends as `python -m nncourse` does: the grading is unchanged.
"""
import sys
import time

STARTED = time.time()
MARKS = []


def mark(what, when=None):
    MARKS.append(((when or time.time()) - STARTED, what))


def wrap(owner, name):
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        mark(f"{name} begins")
        try:
            return original(*args, **kwargs)
        finally:
            mark(f"{name} ends")
    setattr(owner, name, timed)


def stamp(cell, key):
    from datetime import datetime
    return datetime.fromisoformat(cell.metadata.execution[key].replace("Z", "+00:00")).timestamp()


def main():
    sys.argv = ["nncourse", *sys.argv[1:]]
    from nncourse import __main__ as entry
    from nncourse import template
    start = template.KernelTemplate.__init__

    def started(self, *args, **kwargs):
        start(self, *args, **kwargs)
        mark("kernel template started (none was kept)")
    template.KernelTemplate.__init__ = started
    entry.start_kernel_template_early(sys.argv[1:])
    mark("early template step done")
    from nncourse import batch
    from nncourse.cli import main as nncourse_main
    run_and_decide = batch.run_and_decide

    def traced(nb, *args, **kwargs):
        mark(f"notebook sent to the kernel (torch imported by the grader: {'torch' in sys.modules})")
        out = run_and_decide(nb, *args, **kwargs)
        ran = [c for c in out[0].cells if "iopub.status.busy" in c.metadata.get("execution", {})]
        if ran:
            mark("first cell begins", stamp(ran[0], "iopub.status.busy"))
            for cell in ran:
                grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
                if "train" in grade_id:
                    mark(f"{grade_id} begins", stamp(cell, "iopub.status.busy"))
            mark("last cell ends", stamp(ran[-1], "iopub.status.idle"))
        mark(f"verdicts done (torch imported by the grader: {'torch' in sys.modules})")
        return out
    batch.run_and_decide = traced
    for name in ("start_kernel_in_advance", "grading_environment"):
        wrap(batch, name)
    for name in ("sanitized", "finish"):
        wrap(batch.Driver, name)
    try:
        return nncourse_main()
    finally:
        mark("main returns")
        for seconds, what in sorted(MARKS):
            print(f"{seconds:6.2f} {what}", file=sys.stderr)


if __name__ == "__main__":
    from nncourse.__main__ import exit_without_teardown
    exit_without_teardown(main())  # as python -m nncourse ends
