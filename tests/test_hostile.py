"""Hostile and broken submissions, graded in one batch next to a correct one.

Each submission is the release with one attack added, written the way a student would write it,
on top of the correct answers where the attack should change nothing (cells deleted, moved,
duplicated or retyped) and on top of the blank release where it could only gain points. For
each, the test checks the outcome in the gradebook, the reason recorded for the student, that no
secret reached the student's notebook, and that nothing outside the scratch folder changed."""
import hashlib
import json
import uuid
from pathlib import Path

import nbformat
import pytest

from nncourse import batch, grading, notebook
from nncourse.assignments.tutorial3.samples import BY_NAME

from conftest import REPO, make_course, tcp_listener

TIMEOUT = 60  # per cell: long enough for the correct answers' training on a loaded 2-core machine
SECRET_LINE = "ACCURACY_TOLERANCE = 0.3"  # a line of the reference (grader's process only)
MIME = "application/vnd.nncourse.report+json"
# A cell that forges the report of every test: `forge(fields_of_test)` replaces `_report`.
FORGE = f"""import base64, io
import numpy as np
from IPython.display import display
def emit(test, fields):
    buffer = io.BytesIO()
    np.savez(buffer, **fields)
    display({{{MIME!r}: {{'test': test, 'npz': base64.b64encode(buffer.getvalue()).decode()}}}}, raw=True)
def forge(fields_of):
    global _report
    _report = lambda test: emit(test, fields_of(test))
"""
RUBRIC_LINE = "BEGIN MARK SCHEME"


def code_cell(source):
    """A new code cell, as Jupyter adds it to this (nbformat 4.4, no cell ids) notebook."""
    cell = nbformat.v4.new_code_cell(source)
    del cell["id"]
    return cell


def build_submissions(course, port, outside):
    """{student: notebook, or bytes for a raw file, or None for an empty folder}."""
    release = notebook.read(grading.release_path(course))
    correct = notebook.fill_blanks(release, BY_NAME["correct"].answers())
    gradebook = course / "gradebook" / "gradebook.db"
    source = course / "source" / "tutorial3" / "tutorial3.ipynb"

    def variant(base, edit):
        nb = nbformat.from_dict(base)
        edit(nb)
        return nb

    def added(base, *sources, after="grader_setup"):
        def edit(nb):
            at = next(i for i, c in enumerate(nb.cells) if notebook.meta(c).get("grade_id") == after) + 1
            nb.cells[at:at] = [code_cell(s) for s in sources]
        return variant(base, edit)

    def delete(nb):
        nb.cells = [c for c in nb.cells if not (notebook.role(c) == "test" and "task2" in notebook.meta(c)["grade_id"])
                    and notebook.meta(c).get("grade_id") not in ("grader_setup", "task2_train", "gradient_descent")]

    def duplicate(nb):
        nb.cells += [nbformat.from_dict(c) for c in nb.cells if notebook.role(c) in ("test", "readonly")]

    def reorder(nb):
        tests = [c for c in nb.cells if notebook.role(c) == "test"]
        nb.cells = tests[::-1] + [c for c in nb.cells if notebook.role(c) != "test"]

    def retype(nb):
        cells = notebook.cells_by_id(nb)
        for grade_id in ("task1_random_batch_correct", "task2_cross_entropy_numpy", "task2_train"):
            cells[grade_id].cell_type = "markdown"
            cells[grade_id].pop("outputs")
            cells[grade_id].pop("execution_count")

    def edit_tests(nb):
        for cell in nb.cells:
            if notebook.role(cell) == "test":
                cell.source = '"""Check nothing."""\npass'
                cell.metadata.nbgrader["points"] = 100

    def syntax_errors(nb):
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.source += "\ndef broken(:\n"

    blank_task1 = nbformat.from_dict(correct)
    notebook.cells_by_id(blank_task1)["task1_random_batch"].source = \
        notebook.cells_by_id(release)["task1_random_batch"].source
    return {
        "correct": correct,
        "syntax_errors": variant(correct, syntax_errors),
        "deleted_cells": variant(correct, delete),
        "duplicated_cells": variant(correct, duplicate),
        "reordered_cells": variant(correct, reorder),
        "changed_cell_type": variant(correct, retype),
        "edited_tests": variant(release, edit_tests),
        "endless_loop": added(release, "while True:\n    pass"),
        "ignores_interrupt": added(release, "while True:\n    try:\n        while True:\n            pass\n"
                                            "    except KeyboardInterrupt:\n        pass"),
        "fork_bomb": added(release, "import os\nwhile True:\n    os.fork()"),
        "huge_memory": added(release, "import numpy as np\nx = np.ones(20 * 1024**3 // 8)\nprint(x.sum())"),
        "os_exit": added(release, "import os\nos._exit(0)", "raise SystemExit"),
        "segfault": added(release, "import ctypes\nctypes.string_at(0)",
                          "import numpy as np\nnp.lib.stride_tricks.as_strided(np.zeros(1), shape=(2**40,),"
                          " strides=(2**24,)).sum()"),
        "huge_output": added(release, "for i in range(200):\n    print('x' * 1024 * 1024)"),
        "reads_secrets": added(release, f"print(open({str(gradebook)!r}, 'rb').read())",
                               f"import numpy as np\nprint(np.fromfile({str(gradebook)!r}, dtype=np.uint8))",
                               f"import numpy as np\nprint(np.loadtxt({str(source)!r}, dtype=str, delimiter='~'))"),
        "loopback": added(release, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)",
                          "from torchvision.datasets.utils import download_url\n"
                          f"download_url('http://127.0.0.1:{port}/x', '.')"),
        "writes_outside": added(release, f"open({str(outside)!r}, 'w').write('x')",
                                f"import numpy as np\nnp.save({str(outside)!r}, np.zeros(3))\n"
                                f"np.save({str(source)!r}, np.zeros(3))"),
        "monkeypatch_fake": added(
            blank_task1,
            "import numpy as np\nnp.testing.assert_allclose = lambda *a, **k: None\nnp.allclose = lambda *a, **k: True",
            "import torch\ntorch.allclose = lambda *a, **k: True",
            "get_ipython().showtraceback = lambda *a, **k: None",
            "print = lambda *a, **k: None",
            "def get_random_batch(imgs, lbls, n, rng):\n    return [imgs[:n], lbls[:n]]\n"
            "globals()['get_random_batch'] = get_random_batch",
            "test_lbls_onehot[:] = np.eye(10)[np.argmax(test_lbls_onehot, axis=1)]  # the kernel's copy only",
            "import nncourse",
            after="task1_random_batch"),
        "forged_values": added(release, FORGE + "forge(lambda test: {'y': np.full((6, 10), 0.1)} if 'forward' in test "
                                                 "else {'imgs': np.zeros((2, 40, 1), int), 'lbls': np.zeros((2, 40, 1), int)})"),
        "forged_huge": added(release, FORGE + "HUGE = {'task1_random_batch_correct', 'task2_mlp_numpy_init_correct', "
                                              "'task2_mlp_numpy_forward_correct', 'task3_mlp_torch_init_correct'}\n"
                                              "forge(lambda test: {'y': np.random.rand((20 if test in HUGE else 1) "
                                              "* 1024 ** 2 // 8)})"),
        "forged_pickle": added(release, FORGE + "class Boom:\n    def __reduce__(self):\n"
                                                f"        return (io.open, ({str(outside) + '.unpickled'!r}, 'w'))\n"
                                                "forge(lambda test: {'y': np.array([Boom()], dtype=object)})"),
        "forged_nan": added(release, FORGE + "forge(lambda test: {'y': np.full((6, 10), np.nan)} if 'forward' in test "
                                             "else {'imgs': np.full((2, 40, 1), np.nan), 'lbls': np.zeros((2, 40, 1))})"),
        "duplicated_reports": added(correct, "_real = _report\n"
                                             "def _report(test):\n    _real(test)\n    _real(test)"),
        "input_transformer": added(release, "def skip_tests(lines):\n"
                                            "    return ['pass\\n'] if any('_report' in l for l in lines) else lines\n"
                                            "get_ipython().input_transformers_cleanup.append(skip_tests)"),
        "post_run_hook": added(release, FORGE + "def forge_after(result):\n"
                                                "    emit('task2_mlp_numpy_forward_correct', {'y': np.full((6, 10), 0.1)})\n"
                                                "get_ipython().events.register('post_run_cell', forge_after)"),
        "redefined_report": added(release, "def _report(test):\n    print('all tests passed')"),
        "prints_the_grader": added(correct, "print(In)",
                                   "print(_report.__closure__ and [c.cell_contents for c in _report.__closure__])",
                                   "import inspect\nprint(inspect.getsource(_report))",
                                   "import glob\nprint(glob.glob('/**/reference.py', recursive=True))"),
        "corrupt_notebook": b'{"cells": [\xff\xfe not json, \xc3\x28',
        "empty_folder": None,
    }


def tree_digest(folder, skip=()):
    """{relative path: sha256} of every file under `folder`, except under the `skip` folders."""
    digest = {}
    for path in Path(folder).rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and not any(rel.parts[0] == s for s in skip) and "__pycache__" not in rel.parts:
            digest[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


@pytest.fixture(scope="session")
def hostile(tmp_path_factory):
    course = make_course(tmp_path_factory, "hostile", extra_config=f"c.Execute.timeout = {TIMEOUT}")
    outside = tmp_path_factory.mktemp("outside") / f"pwned-{uuid.uuid4().hex}"
    with tcp_listener() as (port, accepted):
        submissions = build_submissions(course, port, outside)
        for student, content in submissions.items():
            path = grading.submission_path(course, student)
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            elif content is not None:
                notebook.write(content, path)
        graded_by_grader = ("gradebook", "autograded", "feedback", ".batch", "logs", "reports")
        before, repo_before = tree_digest(course, skip=graded_by_grader), tree_digest(REPO / "source")
        results = batch.grade(course, workers=2)
        grading.generate_feedback(course)
        yield dict(course=course, results=results, scores=grading.cell_scores(course), accepted=accepted,
                   outside=outside, unchanged=before == tree_digest(course, skip=graded_by_grader + ("feedback",))
                   and repo_before == tree_digest(REPO / "source"), students=list(submissions))


def earned(scores, student):
    return {g: s for g, (s, m, manual) in scores[student].items() if not manual}


def test_batch_completes_and_the_gradebook_is_intact(hostile):
    assert set(hostile["results"]) == set(hostile["students"])
    assert all(r.graded for r in hostile["results"].values())
    assert set(hostile["scores"]) == set(hostile["students"])
    correct = hostile["scores"]["correct"]
    for student, cells in hostile["scores"].items():  # every student has every graded cell, same maxima
        assert {g: m for g, (s, m, _) in cells.items()} == {g: m for g, (s, m, _) in correct.items()}, student


def test_correct_submission_keeps_full_marks(hostile):
    auto = earned(hostile["scores"], "correct")
    assert sum(auto.values()) == 42 and len(auto) == 27


@pytest.mark.parametrize("student", ["deleted_cells", "duplicated_cells", "reordered_cells", "changed_cell_type"])
def test_restructured_notebooks_are_restored_and_lose_nothing(hostile, student):
    """Deleted, duplicated, moved and retyped cells come back from the gradebook in place."""
    assert earned(hostile["scores"], student) == earned(hostile["scores"], "correct")
    assert hostile["results"][student].reason == ""


BLANK_ATTACKS = ["syntax_errors", "edited_tests", "endless_loop", "ignores_interrupt", "fork_bomb", "huge_memory",
                 "os_exit", "segfault", "huge_output", "reads_secrets", "loopback", "writes_outside", "corrupt_notebook",
                 "empty_folder", "forged_values", "forged_huge", "forged_pickle", "forged_nan", "input_transformer",
                 "post_run_hook", "redefined_report"]


@pytest.mark.parametrize("student", BLANK_ATTACKS)
def test_attacks_on_a_blank_notebook_earn_nothing(hostile, student):
    assert sum(earned(hostile["scores"], student).values()) == 0


def test_patching_libraries_and_printing_gain_nothing_and_cost_nothing_else(hostile):
    """The patches run (the notebook's own asserts go quiet), but verdicts are not taken in the kernel."""
    scores = earned(hostile["scores"], "monkeypatch_fake")
    correct = earned(hostile["scores"], "correct")
    assert {g for g, s in scores.items() if s != correct[g]} == {"task1_random_batch_changes",
                                                                 "task1_random_batch_correct"}
    assert scores["task1_random_batch_correct"] == 0
    assert hostile["results"]["monkeypatch_fake"].reason == ""
    errors = outputs_of(hostile["course"], "monkeypatch_fake")
    assert "No module named 'nncourse'" in errors  # the grader's package is not in the sandbox


def test_forged_reports_fail_with_the_reason(hostile):
    course = hostile["course"]
    forged = outputs_of(course, "forged_values")  # right shapes, wrong values; wrong fields elsewhere
    assert "forward_pass output (class probabilities) is wrong" in forged
    assert "two calls returned the same batch" in forged and "malformed" in forged
    huge = outputs_by_test(course, "forged_huge")  # 4 reports of 27 MiB: 2 fit the notebook's 64 MiB
    assert [t for t, text in huge.items() if "larger than 16 MiB" in text] == ["task1_random_batch_correct",
                                                                              "task2_mlp_numpy_init_correct"]
    dropped = list(huge)[list(huge).index("task2_mlp_numpy_forward_correct"):]  # over budget: this one and later
    assert [t for t, text in huge.items() if "no result was reported" in text] == dropped
    assert "cannot be read as plain arrays" in outputs_of(course, "forged_pickle")
    assert not Path(str(hostile["outside"]) + ".unpickled").exists(), "the grader unpickled a student's report"
    assert "contains NaN or infinite values" in outputs_of(course, "forged_nan")
    assert "reported more than one result" in outputs_of(course, "post_run_hook")
    assert "no result was reported" in outputs_of(course, "input_transformer")
    text = outputs_of(course, "redefined_report")
    assert "no result was reported" in text and "all tests passed" not in text  # test outputs are the grader's


def test_duplicated_reports_of_correct_code_are_not_trusted(hostile):
    assert sum(earned(hostile["scores"], "duplicated_reports").values()) == 0
    assert "reported more than one result" in outputs_of(hostile["course"], "duplicated_reports")


def test_printing_the_grader_shows_no_reference_and_costs_nothing(hostile):
    course = hostile["course"]
    assert earned(hostile["scores"], "prints_the_grader") == earned(hostile["scores"], "correct")
    printed = outputs_of(course, "prints_the_grader")
    assert "_make_reporter" in printed and "[]" in printed  # it printed the probes; no reference.py is there
    feedback = (course / "feedback" / "prints_the_grader" / "tutorial3" / "tutorial3.html").read_text()
    assert "_make_reporter" not in feedback and "output removed: it showed the grader" in feedback


@pytest.mark.parametrize("student, reason", [
    ("endless_loop", f"a cell ran longer than the {TIMEOUT} s limit"),
    ("ignores_interrupt", "still running 10 s after being interrupted"),
    ("os_exit", "execution stopped"),
    ("segfault", "execution stopped"),
    ("corrupt_notebook", "cannot be read"),
    ("empty_folder", "no notebook submitted"),
    ("syntax_errors", ""),
    ("huge_memory", ""),
    ("forged_huge", ""),
])
def test_reason_recorded_for_the_student(hostile, student, reason):
    recorded = hostile["results"][student].reason
    assert reason in recorded if reason else recorded == ""
    log = (hostile["course"] / "logs" / "tutorial3" / f"{student}.log").read_text()
    assert f"reason: {recorded or 'none'}" in log


def outputs_of(course, student):
    """Every output of the student's autograded notebook, as text."""
    path = course / "autograded" / student / "tutorial3" / "tutorial3.ipynb"
    return "\n".join(json.dumps(c.get("outputs", [])) for c in notebook.read(path).cells if c.cell_type == "code")


def outputs_by_test(course, student):
    """{grade_id: outputs as text} of the test cells that have outputs, in notebook order."""
    path = course / "autograded" / student / "tutorial3" / "tutorial3.ipynb"
    return {c.metadata.nbgrader["grade_id"]: json.dumps(c.outputs) for c in notebook.read(path).cells
            if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade") and c.outputs}


def student_visible(course, student):
    """What the student gets back: the feedback page, and the outputs of their graded notebook."""
    path = course / "autograded" / student / "tutorial3" / "tutorial3.ipynb"
    feedback = course / "feedback" / student / "tutorial3" / "tutorial3.html"
    outputs = [json.dumps(c.get("outputs", [])) for c in notebook.read(path).cells] if path.exists() else []
    return "\n".join(outputs) + (feedback.read_text(errors="replace") if feedback.exists() else "")


def test_nothing_leaks_and_nothing_outside_scratch_changes(hostile):
    course = hostile["course"]
    assert hostile["accepted"] == [], "a submission reached the listener on 127.0.0.1"
    assert not hostile["outside"].exists() and not Path(str(hostile["outside"]) + ".npy").exists()
    assert hostile["unchanged"], "a file in the course folder or the repository changed"
    for student in hostile["students"]:
        text = student_visible(course, student)
        assert "SQLite format 3" not in text and SECRET_LINE not in text and RUBRIC_LINE not in text, student
    def added_cell_errors(student):  # the attacks ran, and the sandbox stopped each of them
        nb = notebook.read(course / "autograded" / student / "tutorial3" / "tutorial3.ipynb")
        return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
                and not notebook.meta(c) for o in c.outputs if o.output_type == "error"]
    assert [e.split(":")[0] for e in added_cell_errors("reads_secrets")] == ["FileNotFoundError"] * 3
    loopback = added_cell_errors("loopback")  # the sandbox has a loopback of its own, with no one listening
    assert len(loopback) == 2 and all("Connection refused" in e or "Network is unreachable" in e
                                      for e in loopback), loopback
    writes = added_cell_errors("writes_outside")
    assert len(writes) == 2 and all("Read-only file system" in e or "No such file or directory" in e for e in writes)


def test_output_and_memory_are_capped(hostile):
    course = hostile["course"]
    size = (course / "autograded" / "huge_output" / "tutorial3" / "tutorial3.ipynb").stat().st_size
    assert size < 25 * 1024**2
    assert "output stopped: the notebook printed more than 20 MiB" in student_visible(course, "huge_output")
    assert "MemoryError" in student_visible(course, "huge_memory")


PLAIN = ["edited_tests", "segfault", "reads_secrets", "loopback", "writes_outside", "huge_output", "fork_bomb",
         "forged_values", "input_transformer", "redefined_report"]


def test_plain_nbgrader_autograde_gives_the_same_outcome(hostile):
    """The same protections hold for `nbgrader autograde` run by hand (through nbgrader_config.py)."""
    course, scores = hostile["course"], hostile["scores"]
    grading.autograde(course, PLAIN)
    assert {s: grading.cell_scores(course)[s] for s in PLAIN} == {s: scores[s] for s in PLAIN}
    assert hostile["accepted"] == [] and not hostile["outside"].exists()
    for student in PLAIN:
        text = student_visible(course, student)
        assert "SQLite format 3" not in text and SECRET_LINE not in text, student
    crashed = notebook.read(course / "autograded" / "segfault" / "tutorial3" / "tutorial3.ipynb")
    assert "NotRun" in {o.get("ename") for c in crashed.cells if c.cell_type == "code" for o in c.outputs}
