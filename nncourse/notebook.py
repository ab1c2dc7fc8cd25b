"""Notebook building blocks: nbgrader cell roles, filling blanks, and the metadata lint."""
import re
from pathlib import Path

import nbformat

from .preprocessors import STUB_PREFIX

REGIONS = [("### BEGIN SOLUTION", "### END SOLUTION"),
           ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"),
           ("=== BEGIN MARK SCHEME ===", "=== END MARK SCHEME ===")]
GRADE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
TASK = re.compile(r"^(task\d+)_")  # a graded cell's grade_id starts with its task: task2_...


def task_of(grade_id):
    """The task a grade_id belongs to ("task2"), or "other"."""
    match = TASK.match(grade_id)
    return match.group(1) if match else "other"


def read(path):
    return nbformat.read(str(path), as_version=4)


def write(nb, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def meta(cell):
    return cell.metadata.get("nbgrader", {})


def role(cell):
    """'test', 'answer' (manually graded), 'solution', 'readonly', 'task' or None."""
    m = meta(cell)
    if m.get("task"):
        return "task"
    if m.get("grade"):
        return "answer" if m.get("solution") else "test"
    if m.get("solution"):
        return "solution"
    if m.get("locked"):
        return "readonly"
    return None


def cells_by_id(nb):
    return {meta(c)["grade_id"]: c for c in nb.cells if meta(c).get("grade_id")}


def autograded_ids(nb):
    """grade_ids of the test cells, with their points."""
    return {meta(c)["grade_id"]: float(meta(c)["points"]) for c in nb.cells if role(c) == "test"}


def fill_blanks(nb, answers):
    """A copy of the release `nb` with each blank replaced, as a student would type it.

    `answers` maps a cell's grade_id to [(blank text, replacement)]. Each blank must occur
    exactly once in its cell, so an outdated answer key fails loudly instead of silently."""
    filled = nbformat.from_dict(nb)
    cells = cells_by_id(filled)
    for grade_id, pairs in answers.items():
        if grade_id not in cells:
            raise KeyError(f"the release has no cell {grade_id!r}")
        cell = cells[grade_id]
        for blank, text in pairs:
            count = cell.source.count(blank)
            if count != 1:
                raise ValueError(f"blank {blank!r} occurs {count} times in cell {grade_id}, expected once")
            cell.source = cell.source.replace(blank, text)
    return filled


def region_problems(cell, where):
    problems, open_region = [], None
    for number, line in enumerate(cell.source.split("\n"), 1):
        for begin, end in REGIONS:
            if begin in line:
                if open_region:
                    problems.append(f"{where} line {number}: '{begin}' inside an open '{open_region}'")
                open_region = begin
            elif end in line:
                if open_region != begin:
                    problems.append(f"{where} line {number}: '{end}' without a matching '{begin}'")
                open_region = None
    if open_region:
        problems.append(f"{where}: '{open_region}' is never closed")
    return problems


def report_call_problems(cell, where, gid):
    """A test cell decided outside the kernel must report from a hidden region, under its own id."""
    hidden = re.findall(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", cell.source, re.S)
    if not any(f'_report("{gid}")' in region for region in hidden):
        return [f'{where}: test cell should call _report("{gid}") in a hidden-test region']
    return []


def lint(nb, checked_tests=None):
    """Problems with the nbgrader metadata of a source notebook (empty list: none). With
    `checked_tests` (the grade_ids that have a check), every test cell must have one and
    report to it, and every check must have its test cell."""
    problems, seen = [], set()
    for index, cell in enumerate(nb.cells):
        m, kind = meta(cell), role(cell)
        gid = m.get("grade_id", "")
        where = f"cell {index} ({gid or cell.cell_type})"
        problems += region_problems(cell, where)
        if kind is None:
            if any(begin in cell.source for begin, _ in REGIONS):
                problems.append(f"{where}: has a solution/hidden/rubric region but no nbgrader role")
            continue
        if not GRADE_ID.match(gid):
            problems.append(f"{where}: grade_id {gid!r} is empty or has characters outside [a-zA-Z0-9_-]")
        if gid in seen:
            problems.append(f"{where}: duplicate grade_id {gid!r}")
        seen.add(gid)
        if kind in ("test", "answer") and not float(m.get("points", 0)) > 0:
            problems.append(f"{where}: graded cell without positive points")
        if kind == "test":
            if not m.get("locked"):
                problems.append(f"{where}: test cell is not locked (students could edit the test)")
            if not TASK.match(gid):
                problems.append(f"{where}: test grade_id should start with its task, e.g. task2_")
            first = cell.source.split("\n", 1)[0]
            if not re.match(r'^""".+"""$', first):
                problems.append(f"{where}: test cell should open with a one-line docstring saying what it checks")
            if checked_tests is not None:
                if gid not in checked_tests:
                    problems.append(f"{where}: test cell has no check in the assignment's checks")
                problems += report_call_problems(cell, where, gid)
        if kind in ("solution", "answer") and m.get("locked"):
            problems.append(f"{where}: solution cell is locked (students could not answer)")
        if kind == "solution" and cell.cell_type == "code":
            if "### BEGIN SOLUTION" not in cell.source:
                problems.append(f"{where}: solution cell without a solution region")
            for region in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source, re.S):
                if STUB_PREFIX not in region:
                    problems.append(f"{where}: a solution region has no '{STUB_PREFIX}' line for the release")
        if kind == "answer" and cell.cell_type != "markdown":
            problems.append(f"{where}: manually graded answers here are markdown cells")
        if "BEGIN HIDDEN TESTS" in cell.source and kind not in ("test", "readonly"):
            problems.append(f"{where}: hidden tests outside a test or read-only cell")
        if "BEGIN MARK SCHEME" in cell.source and kind not in ("task", "readonly"):
            problems.append(f"{where}: rubric outside a read-only cell")
    tests = {meta(c).get("grade_id") for c in nb.cells if role(c) == "test"}
    problems += [f"check {t!r} has no test cell in the notebook" for t in sorted(set(checked_tests or ()) - tests)]
    return problems
