"""nbgrader preprocessors for this course, wired in by nbgrader_config.py.

- ClearSolutionsToBlanks: the release shows the seed's own `???` lines, written in the
  source as `# STUB: ...` lines inside each solution region.
- ClearHiddenRegions / ClearMarkSchemes: also accept hidden code and rubrics in read-only
  (locked) cells; nbgrader restores those from the gradebook when it autogrades.
- HideGraderOnlyText: strips hidden tests and rubrics from feedback (nbgrader issue #917).
- CheckCellMetadata: nbgrader's, with its schema checked once per process.
"""
import re
import traceback
from functools import lru_cache

from nbformat.v4 import new_output
from nbgrader import utils
from nbgrader.nbgraderformat import MetadataValidator, ValidationError
from nbgrader.nbgraderformat.common import BaseMetadataValidator
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


HIDDEN_ONLY_LINE = "pass  # this cell's tests run when your notebook is graded"


class ClearHiddenRegions(ClearHiddenTests):
    """Remove hidden-test regions from test cells and read-only cells. A test cell left with
    its docstring only gets a `pass` line, so that it does not echo the docstring."""

    def preprocess_cell(self, cell, resources, index):
        removed = self._remove_hidden_test_region(cell)
        _check_allowed(cell, removed, "hidden-test")
        if removed and utils.is_grade(cell) and len(cell.source.strip().splitlines()) == 1:
            cell.source = cell.source.rstrip() + "\n" + HIDDEN_ONLY_LINE
        return cell, resources


class ClearMarkSchemes(ClearMarkScheme):
    """Remove mark-scheme (rubric) regions from task cells and read-only cells."""

    def preprocess_cell(self, cell, resources, index):
        _check_allowed(cell, self._remove_mark_scheme_region(cell), "mark-scheme")
        return cell, resources


class HideGraderOnlyText(NbGraderPreprocessor):
    """Feedback shows students their results, but not the hidden tests' code or the rubrics: the
    regions are cut from the cells, and an output that shows one of their lines (printed by code
    that found a way to read them) is replaced by a note."""

    min_line_length = 20  # shorter lines (`return x`) are too common to tell a leak
    secret_lines = frozenset()  # set per notebook by preprocess()

    def preprocess(self, nb, resources):
        self.secret_lines = grader_only_lines(nb, self.min_line_length)
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        ClearHiddenTests()._remove_hidden_test_region(cell)
        ClearMarkScheme()._remove_mark_scheme_region(cell)
        for i, output in enumerate(cell.get("outputs", [])):
            if any(line in text for text in output_texts(output) for line in self.secret_lines):
                cell.outputs[i] = new_output("stream", name="stdout",
                                             text="[output removed: it showed the grader's hidden code]\n")
        return cell, resources


def grader_only_lines(nb, min_length):
    """The stripped lines of every hidden-test and mark-scheme region, at least `min_length` long."""
    tests, rubrics = ClearHiddenTests(), ClearMarkScheme()  # their delimiters, as the clearing uses them
    begins = (tests.begin_test_delimeter, rubrics.begin_mark_scheme_delimeter)
    ends = (tests.end_test_delimeter, rubrics.end_mark_scheme_delimeter)
    lines, inside = set(), False
    for cell in nb.cells:
        for line in cell.source.splitlines():
            if any(d in line for d in begins):
                inside = True
            elif any(d in line for d in ends):
                inside = False
            elif inside and len(line.strip()) >= min_length:
                lines.add(line.strip())
    return lines


def output_texts(output):
    """Every piece of text in a cell output."""
    texts = [output.get("text", ""), output.get("evalue", ""), *output.get("traceback", [])]
    texts += [v if isinstance(v, str) else "".join(v) for v in output.get("data", {}).values()
              if isinstance(v, (str, list))]
    return [t if isinstance(t, str) else "".join(t) for t in texts]


@lru_cache(maxsize=None)
def schema_validator(schema_json):
    """A jsonschema validator of `schema_json`, the schema itself checked once."""
    import json

    from jsonschema.validators import validator_for
    schema = json.loads(schema_json)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


class OnceCheckedSchema(BaseMetadataValidator):
    """The schema part of nbgrader's metadata validation: jsonschema.validate checks the schema
    itself again for every cell, 0.3 s of each pass over this notebook; this checks it once."""

    def validate_cell(self, cell):
        import json

        from jsonschema.exceptions import best_match
        meta = cell.metadata.get("nbgrader")
        if meta is None or meta.get("schema_version", 0) != self.schema_version:
            return super().validate_cell(cell)  # no metadata, or nbgrader's schema version errors
        error = best_match(schema_validator(json.dumps(self.schema, sort_keys=True)).iter_errors(meta))
        if error is not None:
            raise error


class OnceCheckedValidator(MetadataValidator, OnceCheckedSchema):
    """nbgrader's MetadataValidator, all its checks; its schema part (its base's) is OnceCheckedSchema."""


class CheckCellMetadata(NbGraderPreprocessor):
    """nbgrader's CheckCellMetadata (same checks, same error), with OnceCheckedValidator."""

    def preprocess(self, nb, resources):
        try:
            OnceCheckedValidator().validate_nb(nb)
        except ValidationError:
            self.log.error(traceback.format_exc())
            msg = "Notebook failed to validate; the nbgrader metadata may be corrupted."
            self.log.error(msg)
            raise ValidationError(msg)
        return nb, resources
