"""nbgrader preprocessors for this course, wired in by nbgrader_config.py.

- ClearSolutionsToBlanks: the release shows the seed's own `???` lines, written in the
  source as `# STUB: ...` lines inside each solution region.
- ClearHiddenRegions / ClearMarkSchemes: also accept hidden code and rubrics in read-only
  (locked) cells; nbgrader restores those from the gradebook when it autogrades.
- HideGraderOnlyText: strips hidden tests and rubrics from feedback (nbgrader issue #917).
"""
import re

from nbgrader import utils
from nbgrader.preprocessors import ClearHiddenTests, ClearMarkScheme, ClearSolutions, NbGraderPreprocessor

STUB_PREFIX = "# STUB: "


class ClearSolutionsToBlanks(ClearSolutions):
    """Replace each code solution region by its `# STUB: ` lines, without the prefix."""

    def _replace_solution_region(self, cell, language):
        if cell.cell_type != "code":
            return super()._replace_solution_region(cell, language)
        new_lines, region, in_solution, replaced = [], [], False, False
        for line in cell.source.split("\n"):
            if self.begin_solution_delimeter in line:
                if in_solution:
                    raise RuntimeError(f"nested '{self.begin_solution_delimeter}' in cell:\n{cell.source}")
                in_solution, replaced, region = True, True, []
            elif self.end_solution_delimeter in line:
                if not in_solution:
                    raise RuntimeError(f"'{self.end_solution_delimeter}' without a begin in cell:\n{cell.source}")
                stubs = [re.sub(r"^(\s*)" + re.escape(STUB_PREFIX), r"\1", s) for s in region
                         if s.lstrip().startswith(STUB_PREFIX)]
                if not stubs:
                    raise RuntimeError(
                        f"a solution region has no '{STUB_PREFIX}' line, so students would get no blank. "
                        f"Add the line students should see, e.g. '{STUB_PREFIX}h1 = x.dot(?????)'. "
                        f"Region:\n" + "\n".join(region))
                new_lines += stubs
                in_solution = False
            elif in_solution:
                region.append(line)
            else:
                new_lines.append(line)
        if in_solution:
            raise RuntimeError(f"no '{self.end_solution_delimeter}' in cell:\n{cell.source}")
        cell.source = "\n".join(new_lines)
        return replaced


def _check_allowed(cell, removed, what):
    if removed and not (utils.is_grade(cell) or utils.is_locked(cell) or utils.is_task(cell)):
        raise RuntimeError(f"{what} region in a cell that students can edit; put it in a test cell or a "
                           f"read-only cell, so that nbgrader restores it when grading:\n{cell.source}")


class ClearHiddenRegions(ClearHiddenTests):
    """Remove hidden-test regions from test cells and read-only cells."""

    def preprocess_cell(self, cell, resources, index):
        _check_allowed(cell, self._remove_hidden_test_region(cell), "hidden-test")
        return cell, resources


class ClearMarkSchemes(ClearMarkScheme):
    """Remove mark-scheme (rubric) regions from task cells and read-only cells."""

    def preprocess_cell(self, cell, resources, index):
        _check_allowed(cell, self._remove_mark_scheme_region(cell), "mark-scheme")
        return cell, resources


class HideGraderOnlyText(NbGraderPreprocessor):
    """Feedback shows students their results, but not the hidden tests' code or the rubrics."""

    def preprocess_cell(self, cell, resources, index):
        ClearHiddenTests()._remove_hidden_test_region(cell)
        ClearMarkScheme()._remove_mark_scheme_region(cell)
        return cell, resources
