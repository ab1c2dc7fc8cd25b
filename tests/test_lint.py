"""The nbgrader metadata lint passes on the source and catches each kind of mistake."""
import copy

import pytest

from nncourse import notebook
from nncourse.assignments.tutorial3.checks import CHECKS


def test_source_notebook_passes_the_lint(source_nb):
    assert notebook.lint(source_nb, set(CHECKS)) == []


def cell(nb, grade_id):
    return notebook.cells_by_id(nb)[grade_id]


def duplicate_id(nb):
    notebook.meta(cell(nb, "task2_update_numpy_correct"))["grade_id"] = "task2_cross_entropy_numpy_correct"


def unlocked_test(nb):
    notebook.meta(cell(nb, "task3_mlp_torch_accuracy"))["locked"] = False


def unclosed_region(nb):
    c = cell(nb, "task2_update_numpy")
    c.source = c.source.replace("### END SOLUTION", "")


def nested_region(nb):
    c = cell(nb, "task2_update_numpy")
    c.source = c.source.replace("### END SOLUTION", "### BEGIN SOLUTION\n### END SOLUTION")


def region_without_stub(nb):
    c = cell(nb, "task3_update_torch")
    c.source = "\n".join(line for line in c.source.splitlines() if "# STUB:" not in line)


def missing_docstring(nb):
    c = cell(nb, "task4_update_autograd_correct")
    c.source = c.source.split("\n", 1)[1]


def missing_task_prefix(nb):
    notebook.meta(cell(nb, "task5_cnn_accuracy"))["grade_id"] = "cnn_accuracy"


def hidden_tests_in_student_cell(nb):
    c = cell(nb, "task2_update_numpy")
    c.source += "\n### BEGIN HIDDEN TESTS\nassert True\n### END HIDDEN TESTS"


def locked_solution(nb):
    notebook.meta(cell(nb, "task5_cnn"))["locked"] = True


def answer_without_points(nb):
    notebook.meta(cell(nb, "task2_why_overfit"))["points"] = 0


def bad_grade_id(nb):
    notebook.meta(cell(nb, "task1_random_batch_correct"))["grade_id"] = "task1 random batch"


def cell_without_a_check(nb):
    notebook.meta(cell(nb, "task5_cnn_accuracy"))["grade_id"] = "task5_cnn_accuracy_again"


def reports_under_another_id(nb):
    c = cell(nb, "task2_mlp_numpy_sane")
    c.source = c.source.replace('_report("task2_mlp_numpy_sane")', '_report("task2_mlp_numpy_init_correct")')


def report_call_visible(nb):
    c = cell(nb, "task3_update_torch_correct")
    c.source = c.source.replace("### BEGIN HIDDEN TESTS\n", "").replace("### END HIDDEN TESTS", "")


MISTAKES = {
    duplicate_id: "duplicate grade_id",
    unlocked_test: "test cell is not locked",
    unclosed_region: "never closed",
    nested_region: "inside an open",
    region_without_stub: "no '# STUB: ' line",
    missing_docstring: "one-line docstring",
    missing_task_prefix: "should start with its task",
    hidden_tests_in_student_cell: "hidden tests outside",
    locked_solution: "solution cell is locked",
    answer_without_points: "without positive points",
    bad_grade_id: "characters outside",
    cell_without_a_check: "has no check",
    reports_under_another_id: 'should call _report("task2_mlp_numpy_sane")',
    report_call_visible: "in a hidden-test region",
}


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda f: f.__name__)
def test_lint_catches(source_nb, mistake):
    broken = copy.deepcopy(source_nb)
    mistake(broken)
    problems = notebook.lint(broken, set(CHECKS))
    assert any(MISTAKES[mistake] in p for p in problems), problems


def test_a_check_without_its_test_cell_is_caught(source_nb):
    problems = notebook.lint(source_nb, set(CHECKS) | {"task2_forgotten_check"})
    assert problems == ["check 'task2_forgotten_check' has no test cell in the notebook"]
