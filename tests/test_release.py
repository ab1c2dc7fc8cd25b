"""The student release: true to the seed, in sync with the source, and free of anything graders keep."""
import json
import re
from collections import Counter

from nncourse import notebook

from conftest import RELEASE, SEED


def blank_lines(cells):
    """The `???` lines of code cells, without indentation, in order."""
    return [line.strip() for c in cells if c["cell_type"] == "code"
            for line in "".join(c["source"]).splitlines() if re.search(r"\?\?\?", line)]


def test_every_blank_is_the_seeds_own_line(source_nb):
    seed = json.loads(SEED.read_text())
    release = notebook.read(RELEASE)
    # the read-only cell of check helpers names ??? in its text; blanks are in the cells students edit
    editable = [c for c in release.cells if notebook.role(c) != "readonly"]
    seed_blanks, release_blanks = blank_lines(seed["cells"]), blank_lines(editable)
    assert release_blanks == seed_blanks
    assert "raise NotImplementedError()" not in json.dumps(release)
    assert "indices = range(0, batch_size)" in notebook.cells_by_id(release)["task1_random_batch"].source


def test_one_solution_region_per_seed_blank(source_nb):
    regions = sum(c.source.count("### BEGIN SOLUTION") for c in source_nb.cells if c.cell_type == "code")
    seed = json.loads(SEED.read_text())
    seed_blanks = blank_lines(seed["cells"])
    # Task 1's blank is two seed lines (the commented hint and the constant batch) and one region.
    assert regions == len([b for b in seed_blanks if "TODO" not in b]) == 42


def comparable(nb):
    return [(c.cell_type, c.source, notebook.meta(c)) for c in nb.cells]


def test_committed_release_matches_a_fresh_generation(course):
    fresh = notebook.read(course / "release" / "tutorial3" / "tutorial3.ipynb")
    assert comparable(notebook.read(RELEASE)) == comparable(fresh), \
        "release/ is out of date: run `nbgrader generate_assignment tutorial3 --force` and commit it"


def solution_lines(source_nb):
    """Lines students must write themselves: inside solution regions, other than the stubs."""
    lines = set()
    for cell in source_nb.cells:
        for region in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source, re.S):
            lines |= {line.strip() for line in region.splitlines()
                      if line.strip() and not line.strip().startswith("# STUB:")}
    return lines


def test_release_leaks_no_solution_hidden_test_or_rubric(source_nb):
    text = RELEASE.read_text()
    for marker in ["BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "MARK SCHEME", "# STUB:", "_report",
                   "install_reporter", "Rubric", "ACCURACY_TOLERANCE"]:
        assert marker not in text, marker
    release_lines = {line.strip() for c in notebook.read(RELEASE).cells for line in c.source.splitlines()}
    seed_lines = {line.strip() for c in json.loads(SEED.read_text())["cells"] for line in c["source"]}
    answers = solution_lines(source_nb) - seed_lines  # the seed's given code is not a leak
    assert len(answers) > 40
    assert not answers & release_lines, f"solution lines in the release: {sorted(answers & release_lines)[:5]}"


def test_release_keeps_test_cells_locked_and_answers_editable():
    release = notebook.read(RELEASE)
    for cell in release.cells:
        kind = notebook.role(cell)
        if kind in ("test", "readonly"):
            assert cell.metadata.get("editable") is False and cell.metadata.get("deletable") is False
        if kind in ("solution", "answer"):
            assert cell.metadata.get("editable", True) is True


def test_visible_tests_open_with_a_docstring_and_have_points():
    release = notebook.read(RELEASE)
    tests = [c for c in release.cells if notebook.role(c) == "test"]
    assert len(tests) == 27
    for cell in tests:
        assert cell.source.startswith('"""'), notebook.meta(cell)["grade_id"]
        assert notebook.meta(cell)["points"] > 0


def test_test_cells_print_nothing_of_their_own():
    """A hidden-only test cell ends with a statement, so running it does not echo its docstring."""
    import ast
    release = notebook.read(RELEASE)
    for cell in (c for c in release.cells if notebook.role(c) == "test"):
        last = ast.parse(cell.source).body[-1]
        assert not (isinstance(last, ast.Expr) and isinstance(last.value, ast.Constant)), notebook.meta(cell)["grade_id"]
