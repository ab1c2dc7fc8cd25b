"""The formgrader in a real browser, as a grader uses it: one graded submission, its Manual
Grading page in headless Chromium, each written answer under its rubric; a score and a comment
typed in and saved by the page itself, then found in the gradebook, the feedback and the export.
Screenshots are saved in test-artifacts/."""
import csv
import os
import re
import time

import pytest
from nbgrader.api import Gradebook
from nbgrader.preprocessors import ClearMarkScheme

from browser import ARTIFACTS, headless_chromium, jupyter_lab, needs_chromium
from conftest import SOURCE, make_course
from nncourse import grading, notebook
from nncourse.assignments.tutorial3.samples import STUDENTS
from nncourse.course import Course

pytestmark = [pytest.mark.slow, needs_chromium]

ASSIGNMENT, NOTEBOOK, STUDENT = "tutorial3", "tutorial3", "correct"
WRITTEN = ["task2_why_overfit", "task2_why_unstable", "task5_why_1440"]  # manually graded answers
GRADED, SCORE = "task2_why_overfit", 1.5  # the answer the test grades (out of 2)
COMMENT = "Right about the constant batch. Also say why memorising 40 images leaves the test accuracy at 59.57%."


def cells_by_id(nb):
    return {c.metadata.nbgrader.grade_id: c for c in nb.cells if "grade_id" in c.metadata.get("nbgrader", {})}


def plain(markdown):
    """Text without whitespace and markdown's emphasis and code marks, to compare with rendered text."""
    return re.sub(r"[\s*_`]+", "", markdown)


def rubric_lines(source_cell):
    """The mark scheme of a question cell, line by line, as plain text (list bullets dropped)."""
    mark_scheme = ClearMarkScheme()
    region = source_cell.source.split(mark_scheme.begin_mark_scheme_delimeter)[1]
    region = region.split(mark_scheme.end_mark_scheme_delimeter)[0]
    lines = [plain(re.sub(r"^\s*- ", "", line)) for line in region.strip().splitlines()]
    assert len(lines) >= 3, source_cell.source
    return lines


# For one answer: every rendered cell showing all of its rubric's lines, where the first one is, and
# the answer's panel (the cell holding the score input, whose id is the grade_id).
LAYOUT = """const [gradeId, lines] = arguments;
const plain = s => s.replace(/[\\s*_`]+/g, '');  // as plain() in Python
const answer = document.getElementById(gradeId).closest('.nbgrader_cell');
const rubrics = Array.from(document.querySelectorAll('.text_cell_render'))
  .filter(e => lines.every(line => plain(e.innerText).includes(line)));
const rubric = rubrics[0];
return {count: rubrics.length, answer: plain(answer.innerText),
        before: !!rubric && !!(rubric.compareDocumentPosition(answer) & Node.DOCUMENT_POSITION_FOLLOWING),
        next_cell: !!rubric && rubric.closest('.cell').nextElementSibling === answer.closest('.cell'),
        rubric_bottom: rubric && rubric.getBoundingClientRect().bottom,
        answer_top: answer.getBoundingClientRect().top};"""

# Scroll the question cell to just under the fixed navigation bar; say whether its answer is in view too.
SCROLL = """const answer = document.getElementById(arguments[0]).closest('.cell');
const question = answer.previousElementSibling;
window.scrollTo(0, window.scrollY + question.getBoundingClientRect().top
                   - document.querySelector('.navbar-fixed-top').getBoundingClientRect().bottom - 10);
return answer.getBoundingClientRect().bottom <= window.innerHeight;"""


def wait_until(condition, seconds, what):
    deadline = time.time() + seconds
    while not (value := condition()):
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)
    return value


def saved_grade(course):
    """(manual score, manual comment) of the graded answer, as the gradebook holds them now."""
    with Gradebook(course.db_url) as gb:
        grade = gb.find_grade(GRADED, ASSIGNMENT, NOTEBOOK, STUDENT)
        comment = gb.find_comment(GRADED, ASSIGNMENT, NOTEBOOK, STUDENT)
        return grade.manual_score, comment.manual_comment


def test_a_grader_scores_a_written_answer_under_its_rubric(tmp_path_factory, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    root = make_course(tmp_path_factory, "formgrader")
    grading.write_samples(root, [s for s in STUDENTS if s.name == STUDENT])
    grading.autograde(root)
    course = Course.of(root)
    before = grading.cell_scores(course)[STUDENT]
    assert all(before[g] == (0.0, 2.0, True) for g in WRITTEN)  # three answers wait for a grader
    with Gradebook(course.db_url) as gb:
        submission_id = gb.find_submission_notebook(ASSIGNMENT, NOTEBOOK, STUDENT).id
    source = cells_by_id(notebook.read(SOURCE))
    answers = cells_by_id(notebook.read(grading.submission_path(root, STUDENT)))

    env = {k: v for k, v in os.environ.items() if k != "NBGRADER_EXECUTION"}
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               HOME=str(tmp_path))
    ARTIFACTS.mkdir(exist_ok=True)
    # The formgrader is nbgrader's server extension, enabled by its install
    # (.venv/etc/jupyter/jupyter_server_config.d/nbgrader.json); it reads nbgrader_config.py in the server's cwd.
    with jupyter_lab(root, env) as (url, token), headless_chromium(tmp_path / "profile") as browser:
        # Log in where the grader does, in JupyterLab: its login cookie is for the whole server. (A token
        # given on a formgrader page sets a cookie for that page's folder only, and its API calls get 302.)
        browser.get(f"{url}/lab?token={token}")
        browser.get(f"{url}/formgrader/gradebook/{ASSIGNMENT}/{NOTEBOOK}")  # Manual Grading > assignment > notebook
        link = f"a.name-hidden[href$='/formgrader/submissions/{submission_id}']"
        WebDriverWait(browser, 60).until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, link))).click()
        wait_until(lambda: browser.execute_script(
            "return window.formgrader && formgrader.grades.loaded && formgrader.comments.loaded"), 60,
            "the Manual Grading page to load its grades and comments")
        assert browser.find_element(By.CSS_SELECTOR, ".breadcrumb .active").text.strip() == "Submission #1"

        for grade_id in WRITTEN:
            layout = browser.execute_script(LAYOUT, grade_id, rubric_lines(source[f"{grade_id}_question"]))
            assert layout["count"] == 1, f"{grade_id}: the page does not show its rubric from the source notebook"
            assert layout["before"] and layout["next_cell"], f"{grade_id}: its rubric is not in the cell before it"
            assert layout["rubric_bottom"] <= layout["answer_top"], f"{grade_id}: the rubric is not drawn above it"
            assert plain(answers[grade_id].source) in layout["answer"], f"{grade_id}: the student's answer is not shown"

        assert browser.execute_script(SCROLL, GRADED), "the rubric and the answer do not fit on one screen"
        browser.save_screenshot(str(ARTIFACTS / "formgrader-rubric-before.png"))

        # Type as a grader does: the score, then the comment (leaving the score saves it), then click on
        # the rubric (leaving the comment saves it). Each save ends with a "finished_saving" event. (Not
        # Escape: offline, MathJax does not load from its CDN, and formgrade.js stops before its shortcuts.)
        browser.execute_script("window.saves = 0; $(document).on('finished_saving', () => window.saves++);")
        score = browser.find_element(By.ID, GRADED)
        score.click()
        score.send_keys(str(SCORE))
        comment = browser.find_element(By.ID, f"{GRADED}-comment")
        comment.click()
        comment.send_keys(COMMENT)
        browser.execute_script(SCROLL, GRADED)
        browser.execute_script("return document.getElementById(arguments[0]).closest('.cell').previousElementSibling",
                               GRADED).click()
        wait_until(lambda: browser.execute_script("return window.saves") >= 2, 30, "the page to save both fields")
        assert wait_until(lambda: saved_grade(course) == (SCORE, COMMENT), 30, "the gradebook to hold them")

        browser.execute_script(SCROLL, GRADED)
        assert float(score.get_attribute("value")) == SCORE and comment.get_attribute("value") == COMMENT
        browser.save_screenshot(str(ARTIFACTS / "formgrader-rubric-after.png"))
    for name in ["formgrader-rubric-before.png", "formgrader-rubric-after.png"]:
        assert (ARTIFACTS / name).stat().st_size > 1000

    after = grading.cell_scores(course)[STUDENT]
    assert after[GRADED] == (SCORE, 2.0, False)
    assert {g: v for g, v in after.items() if g != GRADED} == {g: v for g, v in before.items() if g != GRADED}

    feedback = (grading.generate_feedback(course) / STUDENT / ASSIGNMENT / f"{NOTEBOOK}.html").read_text()
    assert re.search(rf'href="#{GRADED}">Written response</a> \(Score: {SCORE} / 2.0\)', feedback)
    assert re.search(rf'<b>Comments:</b>\s*<p>{re.escape(COMMENT)}</p>', feedback)
    assert "Rubric (2 points)" not in feedback and "MARK SCHEME" not in feedback  # students never see rubrics

    with open(grading.export_grades(course), newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["student_id"] == STUDENT)
    assert float(row[GRADED]) == SCORE
    assert float(row["task2_total"]) == sum(v[0] for g, v in after.items() if g.startswith("task2_"))
    assert float(row["total"]) == sum(v[0] for v in before.values()) + SCORE
