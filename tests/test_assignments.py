"""Assignments are plug-ins of the grading machinery: a second assignment needs only a folder of
its own (probes, checks) and a line of configuration, and changing an assignment's checks or
points after grading regrades every student at the next `nncourse grade`."""
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import nbformat
import pytest

from nncourse import batch, grading, notebook
from nncourse.assignments.tutorial3.samples import BY_NAME

from conftest import REPO, local_dask, make_course

pytestmark = pytest.mark.slow  # grades notebooks
PLUGINS = "assignment_plugins"  # a folder of the course, put on sys.path by its nbgrader_config.py


def plugin_config(mapping):
    return textwrap.dedent(f"""
        import sys
        sys.path.insert(0, str(COURSE_ROOT / {PLUGINS!r}))
        c.AssignmentStep.assignments = dict(c.AssignmentStep.assignments, **{mapping!r})
        """)


def cell(kind, source, grade_id, **nbgrader):
    new = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
    del new["id"]
    new.metadata["nbgrader"] = {"schema_version": 3, "grade_id": grade_id, "grade": False, "solution": False,
                                "locked": False, "task": False, **nbgrader}
    return new


TINY_PROBES = '''import numpy as np


def probe(test, notebook, inputs):
    try:
        return {"sums": np.array([notebook["add"](a, b) for a, b in inputs["pairs"]], dtype=float)}
    except Exception as err:
        return {"error": np.array(f"add raised {type(err).__name__}: {err}")}
'''
TINY_CHECKS = '''from pathlib import Path

import numpy as np

from nncourse.verdicts import Check, Failed

PROBES_FILE = Path(__file__).with_name("probes.py")
SETUP_CELL = "setup"
STAND_INS = {}


def inputs():
    return {"pairs": np.array([[1.0, 2.0], [3.5, -1.0]])}


def judge(report, context):
    if not np.allclose(report["sums"], [3.0, 2.5]):
        raise Failed("add returns the wrong sums.")


CHECKS = {"add_correct": Check(judge, {"sums": "f"})}


def context(reports, nb, step):
    return None
'''


def tiny_source():
    nb = nbformat.v4.new_notebook()
    nb.nbformat_minor = 4
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        cell("code", "# Used by the autograder.\n### BEGIN HIDDEN TESTS\n_report = None\n### END HIDDEN TESTS",
             "setup", locked=True),
        cell("code", "def add(a, b):\n    ### BEGIN SOLUTION\n    # STUB: return ???\n    return a + b\n"
                     "    ### END SOLUTION", "add", solution=True),
        cell("code", '"""Check add on two pairs."""\n### BEGIN HIDDEN TESTS\n_report("add_correct")\n'
                     '### END HIDDEN TESTS', "add_correct", grade=True, locked=True, points=2),
    ]
    return nb


def scores(course, assignment, notebook_name):
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook' / 'gradebook.db'}") as gb:
        return {s.student.id: {g.name: (g.score, g.max_score) for g in
                               gb.find_submission_notebook(assignment, notebook_name, s.student.id).grades}
                for s in gb.find_assignment(assignment).submissions}


def tiny_course(tmp_path_factory, name, checks=TINY_CHECKS, source=None, config=""):
    """A course with the tiny assignment as a plug-in (each course its own `tiny_checks`), its release generated."""
    course = make_course(tmp_path_factory, name, plugin_config({"tiny": "tiny_checks.checks"}) + config)
    plugin = course / PLUGINS / "tiny_checks"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("")
    (plugin / "probes.py").write_text(TINY_PROBES)
    (plugin / "checks.py").write_text(checks)
    notebook.write(source or tiny_source(), course / "source" / "tiny" / "tiny.ipynb")
    grading.nbgrader(course, "generate_assignment", "tiny", "--force")
    return course


def submit_tiny(course, student, body):
    nb = notebook.read(course / "release" / "tiny" / "tiny.ipynb")
    nb.cells[1].source = nb.cells[1].source.replace("return ???", body)
    notebook.write(nb, course / "submitted" / student / "tiny" / "tiny.ipynb")


def test_a_second_assignment_needs_only_its_own_folder(tmp_path_factory):
    course = tiny_course(tmp_path_factory, "two_assignments")
    release = notebook.read(course / "release" / "tiny" / "tiny.ipynb")
    assert "_report" not in release.cells[2].source and "return ???" in release.cells[1].source
    for student, body in [("alice", "return a + b"), ("bob", "return a - b"), ("carol", "return undefined_name")]:
        submit_tiny(course, student, body)
    grading.nbgrader(course, "autograde", "tiny", "--force")
    assert {s: v["add_correct"] for s, v in scores(course, "tiny", "tiny").items()} == \
        {"alice": (2.0, 2.0), "bob": (0.0, 2.0), "carol": (0.0, 2.0)}
    outputs = {s: str(notebook.cells_by_id(notebook.read(course / "autograded" / s / "tiny" / "tiny.ipynb"))
                      ["add_correct"].outputs) for s in ("bob", "carol")}
    assert "Test failed: add returns the wrong sums." in outputs["bob"]
    assert "add raised NameError" in outputs["carol"]


@pytest.mark.parametrize("kernel", ["leaves a core free", "has every core", "has every core, check starts a kernel",
                                    "has every core, test ends the notebook"])
def test_batch_workers_decide_a_verdict_while_the_kernel_runs_the_rest_of_the_notebook(tmp_path_factory,
                                                                                     monkeypatch, kernel):
    """The check of a test runs as soon as its cell has run, once, while the kernel runs the cells after
    it; when the kernel has every core (one submission alone), only in CPU time the kernel leaves
    (SCHED_IDLE, as are the threads it starts, torch's among them), here while it sleeps, and a check
    that would start another kernel waits for it to end.
    After the notebook's last cell, the check runs beside the stopping kernel with the grader's own
    priority and torch threads."""
    import torch  # noqa: F401  (imported here: the judge's own first import of it is not what this test times)
    cores = len(os.sched_getaffinity(0))
    if kernel == "leaves a core free":
        if cores < 2:
            pytest.skip("one core: every kernel has it")
        monkeypatch.setattr(batch, "default_workers", lambda: 1)  # one thread for the one kernel
    marks = tmp_path_factory.mktemp("marks") / "decided"
    monkeypatch.setenv("TINY_MARKS", str(marks))
    waits = '    from nncourse.verdicts import not_beside_the_kernel\n    not_beside_the_kernel("a kernel")\n'
    checks = TINY_CHECKS.replace('def judge(report, context):\n',
                                 'def judge(report, context):\n    import os, threading, time, torch\n'
                                 + (waits if kernel.endswith("kernel") else "") +
                                 '    started = []  # a thread it starts, as torch starts its pool: its scheduling policy\n'
                                 '    helper = threading.Thread(target=lambda: started.append(os.sched_getscheduler(0)))\n'
                                 '    helper.start(); helper.join()\n'
                                 '    open(os.environ["TINY_MARKS"], "a").write(f"{time.time()} {os.sched_getscheduler(0)} '
                                 '{torch.get_num_threads()} {threading.current_thread().name} {started[0]}\\n")\n')
    source = tiny_source()
    last = "add_correct" if kernel.endswith("notebook") else "afterwards"
    if last == "afterwards":
        source.cells.append(cell("code", "import time\ntime.sleep(3)", "afterwards", locked=True))
    assert [c for c in source.cells if c.cell_type == "code"][-1].metadata.nbgrader.grade_id == last
    course = tiny_course(tmp_path_factory, "verdicts_" + kernel.replace(",", "").replace(" ", "_"), checks, source)
    submit_tiny(course, "alice", "return a + b")
    results = batch.grade(course, workers=1, assignment="tiny")
    assert results["alice"].graded and scores(course, "tiny", "tiny")["alice"]["add_correct"] == (2.0, 2.0)
    decided = [line.split() for line in marks.read_text().splitlines()]
    executed = notebook.read(course / ".batch" / "tiny" / "alice.executed.ipynb")
    stamps = notebook.cells_by_id(executed)[last].metadata.execution
    started, finished = (datetime.fromisoformat(stamps[k].replace("Z", "+00:00")).timestamp()
                         for k in ("iopub.status.busy", "iopub.status.idle"))
    assert len(decided) == 1, decided
    when, policy, threads, thread = float(decided[0][0]), int(decided[0][1]), int(decided[0][2]), decided[0][3]
    helper_policy = int(decided[0][4])
    if kernel.endswith("kernel"):  # after the kernel, in the grader's thread, with its torch threads
        assert when > finished and (policy, threads) == (os.SCHED_OTHER, cores), (decided, started, finished)
    elif kernel.endswith("notebook"):  # in the verdicts' thread, no longer idle
        assert (policy, threads, thread.startswith("verdicts")) == (os.SCHED_OTHER, cores, True), decided
    else:
        assert when < finished - 1, (decided, started, finished)
        assert policy == (os.SCHED_OTHER if kernel == "leaves a core free" else os.SCHED_IDLE)
        assert thread.startswith("verdicts"), decided
        assert helper_policy == policy, decided  # threads it starts (torch's pool) are as idle as it is


def test_a_dask_worker_judges_with_the_checks_as_they_are_now(tmp_path_factory):
    """A worker that graded before imports the checks again once they changed (it is not restarted)."""
    course = tiny_course(tmp_path_factory, "dask_checks_changed")
    submit_tiny(course, "alice", "return a + b")
    plugins = {"PYTHONPATH": f"{REPO}:{course / PLUGINS}"}
    with local_dask(tmp_path_factory.mktemp("dask_checks"), [plugins]) as address:
        assert batch.grade(course, scheduler=address, workers=1, assignment="tiny")["alice"].graded
        assert scores(course, "tiny", "tiny")["alice"]["add_correct"] == (2.0, 2.0)
        checks = course / PLUGINS / "tiny_checks" / "checks.py"
        checks.write_text(checks.read_text() + STRICTER_TINY_CHECK)
        results = batch.grade(course, scheduler=address, workers=1, assignment="tiny")
    assert results["alice"].graded and scores(course, "tiny", "tiny")["alice"]["add_correct"] == (0.0, 2.0)
    autograded = notebook.read(course / "autograded" / "alice" / "tiny" / "tiny.ipynb")
    assert "made stricter" in str(notebook.cells_by_id(autograded)["add_correct"].outputs)


STRICTER_TINY_CHECK = """

def _stricter(report, context):
    raise Failed("this check was made stricter after grading")


CHECKS["add_correct"] = Check(_stricter, CHECKS["add_correct"].fields)
"""


def nncourse_grade(course):
    result = subprocess.run([sys.executable, "-m", "nncourse", "--course", str(course), "grade", "--workers", "2"],
                            cwd=course, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


STRICTER_CHECK = '''

def _stricter(report, context):
    raise Failed("this check was made stricter after grading")


CHECKS["task1_random_batch_changes"] = Check(_stricter, CHECKS["task1_random_batch_changes"].fields)
'''


def test_changing_a_check_and_points_after_grading_regrades_everyone(tmp_path_factory):
    course = make_course(tmp_path_factory, "regrade", plugin_config({"tutorial3": "tutorial3_copy.checks"}))
    shutil.copytree(REPO / "nncourse" / "assignments" / "tutorial3", course / PLUGINS / "tutorial3_copy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    grading.write_samples(course, [BY_NAME["correct"], BY_NAME["constant_batch"]])
    first = nncourse_grade(course)
    assert "2 to grade because not graded yet" in first
    before = scores(course, "tutorial3", "tutorial3")
    assert before["correct"]["task1_random_batch_changes"] == (1.0, 1.0)
    assert nncourse_grade(course).count("to grade because") == 0  # nothing changed: nobody regraded

    source = course / "source" / "tutorial3" / "tutorial3.ipynb"
    nb = notebook.read(source)
    notebook.meta(notebook.cells_by_id(nb)["task2_update_numpy_correct"])["points"] = 3
    notebook.write(nb, source)
    grading.generate_release(course)
    with open(course / PLUGINS / "tutorial3_copy" / "checks.py", "a") as checks:
        checks.write(STRICTER_CHECK)

    second = nncourse_grade(course)
    assert "2 to grade because the assignment's source in the gradebook changed" in second
    assert "2 to grade because the assignment's checks or reference changed" in second
    after = scores(course, "tutorial3", "tutorial3")
    for student in ("correct", "constant_batch"):
        assert after[student]["task2_update_numpy_correct"] == (3.0, 3.0)
        assert after[student]["task1_random_batch_changes"] == (0.0, 1.0)


def test_one_submission_runs_in_a_kernel_started_and_preloaded_while_the_driver_prepared_it(tmp_path_factory):
    """`nncourse grade` of one submission starts its kernel before sanitizing, importing the
    preload modules without naming them in the notebook; plain nbgrader's kernel has them too when
    it is forked from the warm template (as root), and not otherwise."""
    source = tiny_source()
    source.cells.append(cell("code", 'import sys\nprint("wave" in sys.modules, "wave" in globals())', "preloaded",
                             locked=True))
    course = tiny_course(tmp_path_factory, "kernel_in_advance", source=source,
                         config='\nc.SandboxedExecute.preload_modules = ["wave"]\n')
    submit_tiny(course, "alice", "return a + b")
    kernels = set(kernel_processes())
    results = batch.grade(course, workers=1, assignment="tiny")
    assert results["alice"].graded and scores(course, "tiny", "tiny")["alice"]["add_correct"] == (2.0, 2.0)
    assert not set(kernel_processes()) - kernels  # the kernel it used is stopped
    printed = notebook.cells_by_id(notebook.read(course / "autograded" / "alice" / "tiny" / "tiny.ipynb"))
    assert printed["preloaded"].outputs[0]["text"] == "True False\n"
    grading.nbgrader(course, "autograde", "tiny", "--force")
    printed = notebook.cells_by_id(notebook.read(course / "autograded" / "alice" / "tiny" / "tiny.ipynb"))
    assert printed["preloaded"].outputs[0]["text"] == ("True False\n" if os.geteuid() == 0 else "False False\n")


def test_a_kernel_started_in_advance_that_dies_still_gives_the_student_a_grade(tmp_path_factory):
    """A notebook that kills the kernel it was given: graded, the test at 0 with the reason, nothing left running."""
    course = tiny_course(tmp_path_factory, "kernel_in_advance_dies", config='\nc.SandboxedExecute.preload_modules = ["wave"]\n')
    submit_tiny(course, "mallory", "import os\n    os._exit(1)")
    kernels = set(kernel_processes())
    results = batch.grade(course, workers=1, assignment="tiny")
    assert results["mallory"].graded and "died" in results["mallory"].reason, results["mallory"]
    assert scores(course, "tiny", "tiny")["mallory"]["add_correct"] == (0.0, 2.0)
    assert not set(kernel_processes()) - kernels


def kernel_processes():
    """Kernels running now. As root, a kernel runs as a uid of its own: the root processes whose
    command line names ipykernel are sandboxes and warm templates, which hold no student code."""
    found = []
    for process in Path("/proc").iterdir():
        try:
            if process.name.isdigit() and b"ipykernel_launcher" in (process / "cmdline").read_bytes():
                if os.geteuid() != 0 or (process / "status").read_text().split("Uid:")[1].split()[0] != "0":
                    found.append(process.name)
        except OSError:  # it ended meanwhile
            pass
    return found
