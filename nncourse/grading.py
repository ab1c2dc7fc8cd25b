"""Grading steps: nbgrader's standard commands run in a course folder, and results read back
from the gradebook."""
import os
import subprocess
import sys
from pathlib import Path

from . import notebook

ASSIGNMENT = "tutorial3"
NOTEBOOK = "tutorial3"


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
    return Path(course) / "release" / ASSIGNMENT / f"{NOTEBOOK}.ipynb"


def submission_path(course, student):
    return Path(course) / "submitted" / student / ASSIGNMENT / f"{NOTEBOOK}.ipynb"


def generate_release(course):
    nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")
    return release_path(course)


def write_samples(course, students):
    """Sample submissions: the release with its blanks filled in by each sample student."""
    release = notebook.read(release_path(course))
    for student in students:
        notebook.write(student.notebook(release), submission_path(course, student.name))
    return [s.name for s in students]


def autograde(course, students=None):
    """nbgrader autograde, for the named students or for every submission."""
    for student in students or [None]:
        nbgrader(course, "autograde", ASSIGNMENT, "--force", *(["--student", student] if student else []))


def generate_feedback(course):
    nbgrader(course, "generate_feedback", ASSIGNMENT, "--force")
    return Path(course) / "feedback"


def export_grades(course):
    path = Path(course) / "grades.csv"
    nbgrader(course, "export", "--to", str(path))
    return path


def cell_scores(course):
    """{student: {grade_id: (score, max_score, needs_manual_grade)}} from the gradebook."""
    from nbgrader.api import Gradebook
    db_url = f"sqlite:///{Path(course) / 'gradebook' / 'gradebook.db'}"
    with Gradebook(db_url) as gb:
        return {
            sub.student.id: {g.name: (float(g.score), float(g.max_score), bool(g.needs_manual_grade))
                             for g in gb.find_submission_notebook(ASSIGNMENT, NOTEBOOK, sub.student.id).grades}
            for sub in gb.find_assignment(ASSIGNMENT).submissions
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
