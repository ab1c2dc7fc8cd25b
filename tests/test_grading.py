"""End-to-end grading: scores read from the gradebook after a real `nbgrader autograde`."""
import html
import re

import pytest

from nncourse import notebook

from conftest import SEQUENTIAL, SOURCE


def autograded_scores(scores, student, source_nb):
    """Scores of the test cells (unanswered written answers are also scored 0 automatically)."""
    tests = notebook.autograded_ids(source_nb)
    return {gid: v for gid, v in scores[student].items() if gid in tests}


def test_source_earns_every_autograded_point(graded, source_nb):
    expected = notebook.autograded_ids(source_nb)
    got = autograded_scores(graded, "solution", source_nb)
    assert set(got) == set(expected)
    lost = {gid: f"{s}/{m}" for gid, (s, m, _) in got.items() if s != m}
    assert not lost, f"the solution loses points in {lost}"
    assert sum(s for s, _, _ in got.values()) == sum(expected.values()) == 42


def test_blank_release_earns_no_autograded_point(graded, source_nb):
    got = autograded_scores(graded, "blank", source_nb)
    assert set(got) == set(notebook.autograded_ids(source_nb)), "the blank release was not fully graded"
    earned = {gid: s for gid, (s, _, _) in got.items() if s != 0}
    assert not earned, f"the blank release earns points in {earned}"


@pytest.mark.parametrize("student", SEQUENTIAL, ids=lambda s: s.name)
def test_sample_student_gets_the_designed_grade(graded, source_nb, student):
    expected = {gid: (0.0 if gid in student.fails else points)
                for gid, points in notebook.autograded_ids(source_nb).items()}
    assert student.fails <= set(expected), "the sample names cells that do not exist"
    got = {gid: s for gid, (s, _, _) in autograded_scores(graded, student.name, source_nb).items()}
    wrong = {gid: f"got {got.get(gid)}, designed {want}" for gid, want in expected.items() if got.get(gid) != want}
    assert not wrong, f"{student.name} ({student.description}): {wrong}"


def test_written_answers_wait_for_a_grader(graded, source_nb):
    answers = [notebook.meta(c)["grade_id"] for c in source_nb.cells if notebook.role(c) == "answer"]
    assert len(answers) == 3
    for student in ["correct", "constant_batch"]:
        for gid in answers:
            score, max_score, needs_manual = graded[student][gid]
            assert needs_manual and max_score == 2, (student, gid)


def test_graders_see_rubrics_in_the_autograded_notebook(graded, course):
    autograded = notebook.read(course / "autograded" / "correct" / "tutorial3" / "tutorial3.ipynb")
    release = notebook.read(course / "release" / "tutorial3" / "tutorial3.ipynb")
    question = "task5_why_1440_question"
    assert "Rubric" in notebook.cells_by_id(autograded)[question].source
    assert "Rubric" not in notebook.cells_by_id(release)[question].source
    answer = notebook.cells_by_id(autograded)["task5_why_1440"].source
    assert "10*12*12 = 1440" in answer  # the student's own answer is kept


def visible_text(page):
    """Text of an HTML page as a reader sees it (syntax highlighting splits code into spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


GRADER_ONLY = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS|"
                         r"=== BEGIN MARK SCHEME ===\n(.*?)=== END MARK SCHEME ===", re.S)


def grader_only_lines(source_nb):
    """Lines of hidden tests and rubrics whose text appears nowhere else in the source notebook
    (the reference solution shares lines with the students' own code and the given cells)."""
    hidden, elsewhere = set(), []
    for cell in source_nb.cells:
        for block in GRADER_ONLY.findall(cell.source):
            hidden |= {line.strip() for line in "".join(block).splitlines() if len(line.strip()) >= 12}
        elsewhere.append(GRADER_ONLY.sub("", cell.source))
    elsewhere = "\n".join(elsewhere)
    return {line for line in hidden if line not in elsewhere}


def test_feedback_hides_hidden_tests_and_rubrics(graded, course):
    autograded = notebook.read(course / "autograded" / "numpy_relu_mask_missing" / "tutorial3" / "tutorial3.ipynb")
    hidden = grader_only_lines(autograded)  # the probes and their inputs, as they ran, and the rubrics
    assert len(hidden) > 40
    assert '_report("task2_mlp_numpy_backward_correct")' in hidden  # restored, so the check below means something
    assert any("_make_reporter" in line for line in hidden)
    pages = sorted((course / "feedback").glob("*/tutorial3/tutorial3.html"))
    assert {p.parts[-3] for p in pages} >= {"solution", "blank", *(s.name for s in SEQUENTIAL)}
    for page in pages:
        text = visible_text(page.read_text())
        leaked = [line for line in hidden if line in text]
        assert not leaked, f"{page} shows grader-only lines: {leaked[:3]}"


def test_feedback_explains_failures_without_the_test_code(graded, course):
    text = visible_text((course / "feedback" / "numpy_relu_mask_missing" / "tutorial3" / "tutorial3.html").read_text())
    assert "Test failed: grad_w1 is wrong" in text
    assert "Test failed: final test accuracy of MLP_Numpy after the training above is" in text


def test_feedback_says_the_test_set_was_evaluated_less_often(graded, course):
    """The grading profile shows in each training cell of the feedback, in one line."""
    text = visible_text((course / "feedback" / "correct" / "tutorial3" / "tutorial3.html").read_text())
    assert text.count("Grading run: the test set was evaluated every 100 iterations and at the last one") == 4


def test_export_lists_every_student(graded, course):
    import csv
    from nncourse import grading
    with open(grading.export_grades(course), newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["student_id"] for row in rows} == set(graded)
    assert len(rows) == len(graded)
    assert {float(row["total"]) for row in rows if row["student_id"] == "solution"} == {42.0}
