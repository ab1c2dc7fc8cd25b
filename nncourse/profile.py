"""The grading profile: in grading runs, the instructor's locked training cells evaluate the test
set less often than in the student's own runs. Training never depends on that evaluation, and the
grader computes each final accuracy itself from the reported parameters, so grades are unchanged;
only the time goes down.

The assignment's checks module names the cells and their argument:
- TRAINING_CELLS: grade_ids of the locked cells that train a model;
- TEST_EVERY_ARGUMENT: the keyword argument of the call in those cells that sets how often the
  test set is evaluated (an integer literal).
"""
import ast

from traitlets import Integer

from .verdicts import AssignmentStep

NOTE = ("# Grading run: the test set was evaluated every {every} iterations and at the last one "
        "(every {was} in the notebook), to grade faster. Your results are the same.\n")


def set_keyword(source, keyword, value):
    """(`source` with the integer literal of `keyword=` in its one call set to `value`, the old value).
    ValueError if the source has no such argument, or more than one."""
    found = [k.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
             for k in node.keywords if k.arg == keyword]
    if len(found) != 1 or not isinstance(found[0], ast.Constant) or type(found[0].value) is not int:
        raise ValueError(f"expected one `{keyword}=<integer>` argument, found {len(found)}")
    node = found[0]
    lines = source.splitlines(keepends=True)
    line = lines[node.lineno - 1]
    lines[node.lineno - 1] = line[:node.col_offset] + str(value) + line[node.end_col_offset:]
    return "".join(lines), node.value


class GradingProfile(AssignmentStep):
    """Sanitize step (after RestoreCells has put back the instructor's locked cells): in the
    assignment's training cells, the test set is evaluated every `test_every` iterations."""
    test_every = Integer(0, help="In grading runs, the locked training cells evaluate the test set every "
                                 "this many iterations (and at the last one) instead of the notebook's own "
                                 "value; grades do not change. 0 keeps the notebook's value. Students' own "
                                 "runs are not affected.").tag(config=True)

    def preprocess(self, nb, resources):
        assignment, _ = self.assignment(resources)
        if not self.test_every or assignment is None or not hasattr(assignment, "TEST_EVERY_ARGUMENT"):
            return nb, resources
        for cell in nb.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if cell.cell_type != "code" or grade_id not in assignment.TRAINING_CELLS:
                continue
            try:
                source, was = set_keyword(cell.source, assignment.TEST_EVERY_ARGUMENT, self.test_every)
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"grading profile: training cell {grade_id!r} cannot be changed ({err}); "
                                 f"fix TEST_EVERY_ARGUMENT or TRAINING_CELLS in {assignment.__name__}, "
                                 f"or set c.GradingProfile.test_every = 0") from None
            cell.source = NOTE.format(every=self.test_every, was=was) + source
        return nb, resources
