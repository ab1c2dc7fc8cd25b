"""Grading steps: nbgrader's standard commands run in a course folder, and results read back
from the gradebook."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

from . import notebook
from .course import Course


class GradingError(RuntimeError):
    pass


def nbgrader(course, *args):
    """Run an nbgrader command in `course`; raise with the end of its log if it fails."""
    env = dict(os.environ)
    # nbgrader runs helper programs (alembic) from the same environment as itself
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [sys.executable, "-m", "nbgrader", *args]
    result = subprocess.run(cmd, cwd=course, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise GradingError(f"`nbgrader {' '.join(args)}` failed in {course}:\n{result.stderr[-3000:]}")
    return result


def new_course(root, repo, extra_config=""):
    """A fresh course folder at `root`: `repo`'s nbgrader_config.py (plus `extra_config` lines)
    and source/, an empty gradebook, and `repo`'s MNIST linked in. Used by the demo, the tests
    and the benchmark, so that none of them writes into the repository's tracked files."""
    import shutil
    root, repo = Path(root), Path(repo)
    root.mkdir(parents=True, exist_ok=True)
    config = (repo / "nbgrader_config.py").read_text()
    (root / "nbgrader_config.py").write_text(config + (f"\n{extra_config}\n" if extra_config else ""))
    shutil.rmtree(root / "source", ignore_errors=True)
    shutil.copytree(repo / "source", root / "source", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (root / "gradebook").mkdir(exist_ok=True)
    if not (root / "data").exists():
        (root / "data").symlink_to((repo / "data").resolve(), target_is_directory=True)
    return root


def release_path(course):
    return Course.of(course).notebook("release")


def submission_path(course, student):
    return Course.of(course).notebook("submitted", student)


def generate_release(course, assignment=None):
    course = Course.of(course)
    assignment = assignment or course.assignment
    nbgrader(course.root, "generate_assignment", assignment, "--force")
    return course.notebook("release", assignment=assignment)


def write_samples(course, students):
    """Sample submissions: the release with its blanks filled in by each sample student."""
    course = Course.of(course)
    release = notebook.read(course.notebook("release"))
    for student in students:
        notebook.write(student.notebook(release), course.notebook("submitted", student.name))
    return [s.name for s in students]


def autograde_student(course, student, assignment=None, config=None):
    """nbgrader's own `autograde` of one student, in this process, with the course's configuration
    or a changed copy of it (`config`). Returns nbgrader's result: {"success", "log", "error"}."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    course = Course.of(course)
    config = config or course.config
    here = os.getcwd()
    os.chdir(course.root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbgrader's SQLAlchemy warnings on new students
            api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
            return api.autograde(assignment or course.assignment, student, force=True, create=True)
    finally:
        os.chdir(here)


def autograde(course, students=None):
    """nbgrader autograde, one student after another, for the named students or for every submission."""
    course = Course.of(course)
    for student in students or course.students():
        result = autograde_student(course, student)
        if not result.get("success"):
            raise GradingError(f"nbgrader autograde failed for {student}:\n"
                               f"{(result.get('error') or result.get('log') or '')[-3000:]}")


def generate_feedback(course):
    course = Course.of(course)
    nbgrader(course.root, "generate_feedback", course.assignment, "--force")
    return course.root / course.directory.feedback_directory


def export_grades(course):
    path = Course.of(course).root / "grades.csv"
    nbgrader(path.parent, "export", "--to", str(path))
    return path


def cell_scores(course, assignment=None):
    """{student: {grade_id: (score, max_score, needs_manual_grade)}} from the gradebook."""
    from nbgrader.api import Gradebook
    course = Course.of(course)
    assignment = assignment or course.assignment
    name = course.notebook_name(assignment)
    with Gradebook(course.db_url) as gb:
        return {
            sub.student.id: {g.name: (float(g.score), float(g.max_score), bool(g.needs_manual_grade))
                             for g in gb.find_submission_notebook(assignment, name, sub.student.id).grades}
            for sub in gb.find_assignment(assignment).submissions
        }


def score_table(scores):
    """Text table: autograded points per task and overall, one row per student."""
    tasks = sorted({notebook.task_of(g) for cells in scores.values() for g in cells} - {"other"})
    lines = [f"{'student':28s}" + "".join(f"{t:>8s}" for t in tasks) + f"{'auto':>10s}{'manual':>9s}"]
    for student in sorted(scores):
        cells = scores[student]
        auto = {g: v for g, v in cells.items() if not v[2]}
        per_task = [sum(v[0] for g, v in auto.items() if notebook.task_of(g) == t) for t in tasks]
        max_task = [sum(v[1] for g, v in auto.items() if notebook.task_of(g) == t) for t in tasks]
        manual = sum(1 for v in cells.values() if v[2])
        lines.append(f"{student:28s}" + "".join(f"{s:>4g}/{m:<3g}" for s, m in zip(per_task, max_task))
                     + f"{sum(per_task):>6g}/{sum(max_task):<3g}{manual:>5d} to grade")
    return "\n".join(lines)
