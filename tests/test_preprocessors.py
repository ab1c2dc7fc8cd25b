"""The course's nbgrader preprocessors, on single cells."""
import nbformat
import pytest

from nbgrader.nbgraderformat import SchemaTooOldError, ValidationError
from nbgrader.preprocessors import CheckCellMetadata as NbgraderCheckCellMetadata

from nncourse import notebook, preprocessors
from nncourse.preprocessors import (CheckCellMetadata, ClearHiddenRegions, ClearMarkSchemes, ClearSolutionsToBlanks,
                                    HideGraderOnlyText)

from conftest import SOURCE


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


CORRUPTIONS = {
    "valid": lambda meta: None,
    "points not a number": lambda meta: meta.update(points="two"),
    "grade_id missing": lambda meta: meta.pop("grade_id"),
    "grade not a boolean": lambda meta: meta.update(grade="yes"),
    "old schema": lambda meta: meta.update(schema_version=1),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_cell_metadata_check_decides_as_nbgraders_own(corruption):
    """Our CheckCellMetadata passes and fails exactly the notebooks that nbgrader's does."""
    nb = notebook.read(SOURCE)
    graded = next(c for c in nb.cells if notebook.meta(c).get("grade"))
    CORRUPTIONS[corruption](graded.metadata["nbgrader"])
    outcomes = []
    for step in (NbgraderCheckCellMetadata(), CheckCellMetadata()):
        try:
            step.preprocess(nbformat.from_dict(nb), {})
            outcomes.append("passed")
        except (ValidationError, SchemaTooOldError) as err:  # and the error it was raised from
            outcomes.append(f"{type(err).__name__}: {err} (from {err.__context__!r})")
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0] == "passed") == (corruption == "valid"), outcomes


def test_cell_metadata_schema_is_checked_once_per_process_not_once_per_cell(monkeypatch):
    """nbgrader's step checks the schema itself for every cell; ours once, for any number of notebooks."""
    import jsonschema
    checked = []
    original = jsonschema.Draft4Validator.check_schema.__func__
    monkeypatch.setattr(jsonschema.Draft4Validator, "check_schema",
                        classmethod(lambda cls, schema, **kw: checked.append(1) or original(cls, schema, **kw)))
    preprocessors.schema_validator.cache_clear()
    nb = notebook.read(SOURCE)
    cells = sum("nbgrader" in c.metadata for c in nb.cells)
    NbgraderCheckCellMetadata().preprocess(nb, {})
    assert len(checked) == cells > 10
    checked.clear()
    for _ in range(2):
        CheckCellMetadata().preprocess(nb, {})
    assert len(checked) == 1


def test_nbconvert_checks_each_notebook_once_per_conversion(monkeypatch):
    """nbconvert validates the notebook after each step by default; the course's configuration, once."""
    from nbconvert.exporters import NotebookExporter
    from nbconvert.preprocessors import ClearOutputPreprocessor
    from traitlets.config import Config
    from nncourse.course import Course
    from conftest import REPO
    validated = []
    monkeypatch.setattr(NotebookExporter, "_validate_preprocessor", lambda self, nb, step: validated.append(step))
    counts = []
    for config in (Config(), Course.load(REPO).config.copy()):
        config.Exporter.default_preprocessors = []  # as nbgrader's converters set it
        exporter = NotebookExporter(config=config)
        for _ in range(5):
            exporter.register_preprocessor(ClearOutputPreprocessor(), enabled=True)
        validated.clear()
        exporter.from_notebook_node(notebook.read(SOURCE))
        counts.append(len(validated))
    assert counts == [5, 1], counts
