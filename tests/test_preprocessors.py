"""The course's nbgrader preprocessors, on single cells."""
import nbformat
import pytest

from nncourse.preprocessors import (ClearHiddenRegions, ClearMarkSchemes, ClearSolutionsToBlanks,
                                    HideGraderOnlyText)


def code_cell(source, **nbgrader):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"schema_version": 3, "grade_id": "x", "grade": False, "solution": False,
                                 "locked": False, "task": False, **nbgrader}
    return cell


def clear_solutions(cell):
    pre = ClearSolutionsToBlanks()
    return pre.preprocess_cell(cell, {"language": "python"}, 0)[0]


def test_solution_region_becomes_its_stub_lines_with_their_indentation():
    cell = code_cell("def f(x):\n    ### BEGIN SOLUTION\n    # STUB: y = ????(x)\n    # STUB: #hint\n"
                     "    y = abs(x)\n    ### END SOLUTION\n    return y", solution=True)
    assert clear_solutions(cell).source == "def f(x):\n    y = ????(x)\n    #hint\n    return y"


def test_region_without_stub_is_refused_with_the_fix():
    cell = code_cell("### BEGIN SOLUTION\ny = 1\n### END SOLUTION", solution=True)
    with pytest.raises(RuntimeError, match="has no '# STUB: ' line.*Add the line students should see"):
        clear_solutions(cell)


def test_markdown_answer_becomes_your_answer_here():
    cell = nbformat.v4.new_markdown_cell("### BEGIN SOLUTION\nmodel answer\n### END SOLUTION")
    cell.metadata["nbgrader"] = {"grade_id": "a", "grade": True, "solution": True, "locked": False, "points": 1}
    assert clear_solutions(cell).source == "YOUR ANSWER HERE"


def test_hidden_code_allowed_in_read_only_cells_but_not_in_student_cells():
    readonly = code_cell("# kept\n### BEGIN HIDDEN TESTS\nsecret()\n### END HIDDEN TESTS", locked=True)
    assert ClearHiddenRegions().preprocess_cell(readonly, {}, 0)[0].source == "# kept"
    editable = code_cell("### BEGIN HIDDEN TESTS\nsecret()\n### END HIDDEN TESTS", solution=True)
    with pytest.raises(RuntimeError, match="cell that students can edit"):
        ClearHiddenRegions().preprocess_cell(editable, {}, 0)


def test_a_hidden_only_test_cell_does_not_echo_its_docstring_in_the_release():
    test = code_cell('"""Check f."""\n### BEGIN HIDDEN TESTS\n_report("x")\n### END HIDDEN TESTS',
                     grade=True, locked=True, points=1)
    source = ClearHiddenRegions().preprocess_cell(test, {}, 0)[0].source
    assert source.startswith('"""Check f."""\n') and source.splitlines()[-1].startswith("pass")
    visible = code_cell('"""Check g."""\n### BEGIN HIDDEN TESTS\n_report("x")\n### END HIDDEN TESTS\nassert g()',
                        grade=True, locked=True, points=1)
    assert ClearHiddenRegions().preprocess_cell(visible, {}, 0)[0].source == '"""Check g."""\nassert g()'


def test_rubric_allowed_in_read_only_markdown():
    cell = nbformat.v4.new_markdown_cell("**Q?**\n=== BEGIN MARK SCHEME ===\n1 point\n=== END MARK SCHEME ===")
    cell.metadata["nbgrader"] = {"grade_id": "q", "grade": False, "solution": False, "locked": True}
    assert ClearMarkSchemes().preprocess_cell(cell, {}, 0)[0].source == "**Q?**"


def test_feedback_strips_hidden_tests_and_rubrics_from_any_cell():
    cell = code_cell('"""doc"""\n### BEGIN HIDDEN TESTS\nsecret()\n### END HIDDEN TESTS\n'
                     '=== BEGIN MARK SCHEME ===\nrubric\n=== END MARK SCHEME ===', grade=True, locked=True)
    assert HideGraderOnlyText().preprocess_cell(cell, {}, 0)[0].source == '"""doc"""'


def test_feedback_drops_outputs_that_show_hidden_code():
    grader = code_cell("### BEGIN HIDDEN TESTS\nreference_answer = compute_the_reference(x)\n### END HIDDEN TESTS",
                       locked=True)
    leak = code_cell("print(In[1])", solution=True)
    leak.outputs = [nbformat.v4.new_output("stream", name="stdout", text="reference_answer = compute_the_reference(x)\n")]
    fine = code_cell("print(2)", solution=True)
    fine.outputs = [nbformat.v4.new_output("stream", name="stdout", text="reference_answer is 2\n")]
    nb = nbformat.v4.new_notebook(cells=[grader, leak, fine])
    nb, _ = HideGraderOnlyText().preprocess(nb, {})
    assert nb.cells[1].outputs[0].text == "[output removed: it showed the grader's hidden code]\n"
    assert nb.cells[2].outputs[0].text == "reference_answer is 2\n"
    assert "compute_the_reference" not in nb.cells[0].source
