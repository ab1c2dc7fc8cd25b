"""The student's side of the release, run in a real Jupyter kernel as a student runs it (no
NBGRADER_EXECUTION): the visible checks find the sample bugs without holding the answers, correct
code in any style passes them, and "Run All" reaches the end of the notebook with any task unfinished."""
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from nbclient import NotebookClient

from nncourse import notebook
from nncourse.assignments.tutorial3.checks import TRAINING_CELLS
from nncourse.assignments.tutorial3.samples import CORRECT, STUDENTS, STYLES, working_on

from conftest import DATA_DIR, RELEASE

SINGLE_BUG = STUDENTS[1:11]  # STUDENTS[0] is the correct one


def run_as_student(nb, folder, allow_errors=True):
    """`nb` executed in a real kernel with the student's environment: MNIST found, not grading."""
    env = {k: v for k, v in os.environ.items() if k != "NBGRADER_EXECUTION"}
    env.update(MNIST_DIR=str(DATA_DIR), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    NotebookClient(nb, kernel_name="python3", timeout=600, allow_errors=allow_errors,
                   resources={"metadata": {"path": str(folder)}}).execute(env=env)
    return nb


def run_all(notebooks, folder, allow_errors=True):
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda nb: run_as_student(nb, folder, allow_errors), notebooks))


def printed(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def failed_checks(nb):
    """{grade_id: [messages]} of the visible checks that printed a failure."""
    failures = {}
    for cell in nb.cells:
        lines = [line for line in printed(cell).splitlines() if line.startswith("✗")]
        if lines:
            failures[notebook.meta(cell).get("grade_id", "")] = lines
    return failures


def without_training(nb):
    """The training cells do not feed any visible check; leaving them out saves about a minute each."""
    nb.cells = [c for c in nb.cells if notebook.meta(c).get("grade_id") not in TRAINING_CELLS]
    return nb


def defined_names(cell_ids):
    release = notebook.cells_by_id(notebook.read(RELEASE))
    return {name for gid in cell_ids for name in re.findall(r"^(?:def|class) (\w+)", release[gid].source, re.M)}


@pytest.mark.slow
def test_visible_checks_find_single_bugs_where_they_are_without_the_answers(tmp_path):
    release = notebook.read(RELEASE)
    students = STUDENTS[:11]
    runs = dict(zip([s.name for s in students],
                    run_all([without_training(s.notebook(release)) for s in students], tmp_path)))
    assert failed_checks(runs["correct"]) == {}, "the correct student sees a failed check"
    found = []
    for student in SINGLE_BUG:
        failures = failed_checks(runs[student.name])
        bug_tasks = {notebook.task_of(cell) for cell in student.edits}
        names = defined_names(student.edits)  # the functions and classes the bug is in
        where = [m for gid, messages in failures.items() if notebook.task_of(gid) in bug_tasks for m in messages]
        if any(name in m for m in where for name in names):
            found.append(student.name)
        answers = [answer for cell in student.edits for _, answer in CORRECT[cell] if len(answer) > 12]
        leaked = [a for a in answers for messages in failures.values() for m in messages if a in m]
        assert not leaked, f"{student.name}: a check's message gives the answer {leaked[0]!r}"
    print(f"visible checks found {len(found)} of {len(SINGLE_BUG)} single-bug samples: {found}")
    assert len(found) >= 9, f"only {found}"


@pytest.mark.slow
def test_correct_code_in_any_style_passes_every_visible_check(tmp_path):
    release = notebook.read(RELEASE)
    runs = run_all([without_training(s.notebook(release)) for s in STYLES], tmp_path)
    assert {s.name: failed_checks(nb) for s, nb in zip(STYLES, runs) if failed_checks(nb)} == {}
    checks = sum("with self_check(" in c.source for c in release.cells)
    assert checks == 19
    assert [sum(printed(c).count("✓") for c in nb.cells) for nb in runs] == [checks] * len(STYLES)


STATES = [set(), {"task1"}, {"task2"}, {"task3"}, {"task3", "task4"}, {"task5"}]
NEEDS = {"task2_train": {"task2"}, "task3_train": {"task3"}, "task4_train": {"task3", "task4"},
         "task5_train": {"task3", "task4", "task5"}}  # tasks whose code each training cell runs


@pytest.mark.slow
def test_run_all_reaches_the_end_with_any_task_unfinished(tmp_path):
    """The release runs top to bottom with no error: blank, and with only one task (or Tasks 3 and 4) done."""
    release = notebook.read(RELEASE)
    states = [working_on(tasks) for tasks in STATES]
    runs = run_all([s.notebook(release) for s in states], tmp_path, allow_errors=False)  # raises at an error
    for tasks, nb in zip(STATES, runs):
        cells = notebook.cells_by_id(nb)
        for training, needs in NEEDS.items():
            out = printed(cells[training])
            if needs <= tasks:
                assert "Testing Accuracy" in out and "Skipped" not in out, (tasks, training)
            else:
                assert out.startswith("Skipped:") and "not defined yet" in out, (tasks, training, out[:200])
        left = [gid for gid, c in cells.items() if notebook.role(c) == "solution" and notebook.task_of(gid) not in tasks
                and gid != "task1_random_batch"]  # Task 1's blank is a comment: the cell runs as released
        for gid in left:
            assert "still has ??? blanks, so it did not run" in printed(cells[gid]), (tasks, gid)
        done_failures = {g for g in failed_checks(nb) if notebook.task_of(g) in tasks}
        assert not done_failures, (tasks, done_failures)


@pytest.mark.slow
def test_under_nbgrader_validate_a_failing_visible_check_is_an_error(course):
    """The same checks that print and go on in the student's Jupyter fail `nbgrader validate`."""
    student = [s for s in STUDENTS if s.name == "numpy_update_ascent"][0]
    path = course / "validate_me.ipynb"
    nb = without_training(student.notebook(notebook.read(RELEASE)))
    notebook.write(nb, path)
    env = dict(os.environ, MNIST_DIR=str(DATA_DIR), PATH=os.pathsep.join([os.path.dirname(sys.executable),
                                                                          os.environ["PATH"]]))
    result = subprocess.run([sys.executable, "-m", "nbgrader", "validate", str(path)], cwd=course, env=env,
                            capture_output=True, text=True)
    out = result.stdout + result.stderr
    assert "VALIDATION FAILED" in out, out[-2000:]
    assert "grad_descent_update_numpy moved params[0] along its gradient" in out, out[-2000:]
    assert "✗" not in out  # raised as an error, not printed as in the student's own runs
