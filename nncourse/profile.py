"""The grading profile: in grading runs, the instructor's locked cells skip work whose result the
grader does not need or already has. Grades are unchanged; only the time goes down.

- Test-set evaluations: the locked training cells evaluate the test set less often. Training
  never depends on that evaluation, and the grader computes each final accuracy itself from the
  reported parameters.
- Prepared data: arrays that locked cells compute from the course's data alone (e.g. normalised
  images) are computed once per machine by the grader, saved in the data folder, and read there
  by those cells (copy-on-write, so the notebook may still change them). A cell whose copy is
  missing computes the array itself, as in the student's own run.
- Evaluations in chunks: a locked cell's call on a whole data set (e.g. a model's forward pass on
  the 10,000 test images) runs on chunks of rows and joins the results, detached from autograd.
  The predictions are the same up to float rounding (BLAS sums a chunk's products in another
  order), and grades never use them: the grader computes each accuracy itself. The kernel touches
  a tenth of the memory, whose first touch it pays for in every fresh process.

The assignment's checks module names what the profile may change:
- TRAINING_CELLS: grade_ids of the locked cells that train a model;
- TEST_EVERY_ARGUMENT: the keyword argument of the call in those cells that sets how often the
  test set is evaluated (an integer literal);
- PREPARED: {grade_id: [statements `name = expression`]} of locked cells, and
  prepare(data_dir) -> {name: array}: the same arrays, computed by the grader.
"""
import ast
import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path

from traitlets import Bool, Integer

from .verdicts import AssignmentStep, checks_digest, load_assignment

NOTE = ("# Grading run: the test set was evaluated every {every} iterations and at the last one "
        "(every {was} in the notebook), to grade faster. Your results are the same.\n")
PREPARED_NOTE = ("# Grading run: {names} read from the grader's copy, computed once per machine from the same\n"
                 "# data by the same steps (the same values), to grade faster.\n")
LOADER = '''def _graders_copy(name, compute):
    import os, numpy
    path = os.path.join(os.environ.get({variable}, ""), {folder}, name + ".npy")
    return numpy.asarray(numpy.load(path, mmap_mode="c")) if os.path.isfile(path) else compute()


'''
PREPARED_FOLDER = ".prepared"  # in the data folder
CHUNKS_NOTE = ("# Grading run: {names} computed {size} rows at a time (the same up to float rounding), "
               "to grade faster. Grades do not use it.\n")
CHUNKS_HELPER = '''def _in_chunks(function, rows, size):
    parts = [function(rows[start:start + size]) for start in range(0, len(rows), size)]
    if type(parts[0]).__module__.startswith("torch"):
        import torch
        return torch.cat([part.detach() for part in parts])
    import numpy
    return numpy.concatenate(parts)


'''


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


def one_assignment(statement, call=False):
    """(name, value node) of `statement`, a whole line `name = expression`; with `call`, the
    expression must be a call with one positional argument. ValueError if it is not."""
    tree = ast.parse(statement).body
    if len(tree) != 1 or not isinstance(tree[0], ast.Assign) or not isinstance(tree[0].targets[0], ast.Name):
        raise ValueError(f"{statement!r} is not `name = expression`")
    value = tree[0].value
    if call and not (isinstance(value, ast.Call) and len(value.args) == 1 and not value.keywords):
        raise ValueError(f"{statement!r} is not `name = function(rows)`")
    return tree[0].targets[0].id, value


def replace_lines(source, statements, replacement):
    """`source` with each of `statements`, a whole line once, replaced (its indent kept) by
    `replacement(statement)`. ValueError if a statement is not a line of `source` just once."""
    lines = source.splitlines(keepends=True)
    for statement in statements:
        at = [i for i, line in enumerate(lines) if line.strip() == statement]
        if len(at) != 1:
            raise ValueError(f"expected the line {statement!r} once, found it {len(at)} times")
        line = lines[at[0]]
        lines[at[0]] = line[:len(line) - len(line.lstrip())] + replacement(statement) + "\n"
    return "".join(lines)


def in_chunks(source, statements, size):
    """`source` with each of `statements` (`name = function(rows)`, a whole line) computing its
    call on `size` rows at a time. ValueError as replace_lines, or for another kind of statement."""
    def chunked(statement):
        name, call = one_assignment(statement, call=True)
        function, rows = (ast.get_source_segment(statement, node) for node in (call.func, call.args[0]))
        return f"{name} = _in_chunks({function}, {rows}, {size})"
    changed = replace_lines(source, statements, chunked)
    names = ", ".join(one_assignment(s)[0] for s in statements)
    return CHUNKS_NOTE.format(names=names, size=size) + CHUNKS_HELPER + changed


def read_prepared(source, statements, variable, folder):
    """`source` with each of `statements` (`name = expression`, a whole line) reading `name` from
    the grader's copy in `folder` of the data folder, computing it as before if there is none.
    ValueError if a statement is not a line of `source` or not a simple assignment."""
    def from_copy(statement):
        name, value = one_assignment(statement)
        return f"{name} = _graders_copy({json.dumps(name)}, lambda: {ast.get_source_segment(statement, value)})"
    changed = replace_lines(source, statements, from_copy)
    names = [one_assignment(s)[0] for s in statements]
    header = PREPARED_NOTE.format(names=", ".join(names) + (" are" if len(names) > 1 else " is"))
    return header + LOADER.format(variable=json.dumps(variable), folder=json.dumps(folder)) + changed


def prepared_key(module, prepared):
    """Names the prepared arrays after what they are computed from (the cells' statements, the
    assignment's files, numpy's version): a change in any of them prepares them anew."""
    from importlib.metadata import version
    return hashlib.sha256(json.dumps([prepared, checks_digest(module), version("numpy")]).encode()).hexdigest()[:16]


def prepared_folder(module, prepared):
    """Where in the data folder the grader's copy of `prepared` (the checks `module`'s PREPARED) lives."""
    return f"{PREPARED_FOLDER}/{prepared_key(module, prepared)}"


class GradingProfile(AssignmentStep):
    """Sanitize step (after RestoreCells has put back the instructor's locked cells)."""
    test_every = Integer(0, help="In grading runs, the locked training cells evaluate the test set every "
                                 "this many iterations (and at the last one) instead of the notebook's own "
                                 "value; grades do not change. 0 keeps the notebook's value. Students' own "
                                 "runs are not affected.").tag(config=True)
    prepared_data = Bool(False, help="In grading runs, the locked cells the assignment lists in PREPARED read "
                                     "their arrays from a copy the grader computes once per machine in the "
                                     "data folder, instead of computing them; grades do not change. Students' "
                                     "own runs are not affected.").tag(config=True)
    chunk_rows = Integer(0, help="In grading runs, the calls the assignment lists in IN_CHUNKS (a model's "
                                 "predictions on the whole test set) run on this many rows at a time, so "
                                 "the kernel touches less memory; the values are the same up to float "
                                 "rounding, and grades do not use them. 0 keeps the notebook's whole-set "
                                 "calls. Students' own runs are not affected.").tag(config=True)

    def preprocess(self, nb, resources):
        assignment, module = self.assignment(resources)
        if assignment is None:
            return nb, resources
        if self.test_every and hasattr(assignment, "TEST_EVERY_ARGUMENT"):
            self.profile_training(nb, assignment)
        if self.prepared_data and getattr(assignment, "PREPARED", None):
            self.profile_prepared(nb, assignment, module)
        if self.chunk_rows and getattr(assignment, "IN_CHUNKS", None):
            self.profile_chunks(nb, assignment)
        return nb, resources

    def cells(self, nb, grade_ids):
        return [(c.metadata.nbgrader["grade_id"], c) for c in nb.cells if c.cell_type == "code"
                and c.metadata.get("nbgrader", {}).get("grade_id") in grade_ids]

    def cannot(self, assignment, grade_id, err, names, setting):
        return ValueError(f"grading profile: cell {grade_id!r} cannot be changed ({err}); fix {names} in "
                          f"{assignment.__name__}, or set c.GradingProfile.{setting}")

    def profile_training(self, nb, assignment):
        for grade_id, cell in self.cells(nb, assignment.TRAINING_CELLS):
            try:
                source, was = set_keyword(cell.source, assignment.TEST_EVERY_ARGUMENT, self.test_every)
            except (ValueError, SyntaxError) as err:
                raise self.cannot(assignment, grade_id, err, "TEST_EVERY_ARGUMENT or TRAINING_CELLS",
                                  "test_every = 0") from None
            cell.source = NOTE.format(every=self.test_every, was=was) + source

    def profile_chunks(self, nb, assignment):
        for grade_id, cell in self.cells(nb, assignment.IN_CHUNKS):
            try:
                cell.source = in_chunks(cell.source, assignment.IN_CHUNKS[grade_id], self.chunk_rows)
            except (ValueError, SyntaxError) as err:
                raise self.cannot(assignment, grade_id, err, "IN_CHUNKS", "chunk_rows = 0") from None

    def profile_prepared(self, nb, assignment, module):
        folder = prepared_folder(module, assignment.PREPARED)
        variable = self.config.SandboxedKernelManager.get("data_variable", "DATA_DIR")
        for grade_id, cell in self.cells(nb, assignment.PREPARED):
            try:
                cell.source = read_prepared(cell.source, assignment.PREPARED[grade_id], variable, folder)
            except (ValueError, SyntaxError) as err:
                raise self.cannot(assignment, grade_id, err, "PREPARED", "prepared_data = False") from None
        nb.metadata.setdefault("nncourse", {})["prepared"] = {"module": module, "folder": folder}


def prepared_array(data_dir, module, name):
    """The array `name` of the grader's copy in `data_dir` (see ensure_prepared) for the checks
    `module`, mapped read-only; None where this machine has no such copy."""
    import numpy as np
    folder = Path(data_dir) / prepared_folder(module, load_assignment(module).PREPARED)
    try:
        return np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None


def ensure_prepared(nb, data_dir, log=None):
    """Before a grading kernel starts: compute the arrays that the notebook's profiled cells read
    (nb.metadata.nncourse.prepared), unless this machine's data folder has them already. A folder
    the grader cannot write is left alone: those cells then compute the arrays themselves."""
    request = nb.metadata.get("nncourse", {}).get("prepared")
    if not request or not data_dir:
        return None
    target = Path(data_dir) / request["folder"]
    if target.is_dir():
        return target
    partial = target.parent / f"partial-{secrets.token_hex(4)}"
    try:
        import numpy as np
        partial.mkdir(parents=True)
        os.chmod(partial.parent, 0o755)  # readable by the kernels' own uids, whatever the grader's umask
        for name, array in load_assignment(request["module"]).prepare(data_dir).items():
            np.save(partial / f"{name}.npy", array)
            os.chmod(partial / f"{name}.npy", 0o644)
        os.chmod(partial, 0o755)
        os.rename(partial, target)
        for old in target.parent.iterdir():  # copies for other code or data, and abandoned ones
            if old != target and (not old.name.startswith("partial-") or time.time() - old.stat().st_mtime > 3600):
                shutil.rmtree(old, ignore_errors=True)
        return target
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        if log:
            log(f"prepared data not written in {target.parent} ({err}); the notebook computes it itself")
        return target if target.is_dir() else None
