"""Restoring the instructor's cells before grading.

RestoreCells: nbgrader's OverwriteCells (locked and test cells get their gradebook source back),
after putting every gradebook cell back in its place: deleted ones are re-inserted and moved
ones moved back, in the source notebook's order. Cells a student added travel with the
gradebook cell they followed. It runs in nbgrader's sanitize step, outside the kernel and before
it starts. Student code itself is never refused: verdicts are decided outside the kernel
(nncourse/verdicts.py).
"""
from types import SimpleNamespace

import nbformat
from nbgrader.api import Gradebook
from nbgrader.preprocessors import OverwriteCells


def source_notebook(resources):
    """The gradebook's record of the source notebook, read once: its cells in order (name, source,
    cell_type, locked, checksum), max scores by grade id, and the ids of solution and task cells."""
    with Gradebook(resources["nbgrader"]["db_url"]) as gradebook:
        source = gradebook.find_notebook(resources["nbgrader"]["notebook"], resources["nbgrader"]["assignment"])
        return SimpleNamespace(
            cells=[SimpleNamespace(name=c.name, source=c.source, cell_type=c.cell_type, locked=c.locked,
                                   checksum=c.checksum) for c in source.source_cells],
            max_scores={c.name: c.max_score for c in source.grade_cells},
            solutions={c.name for c in source.solution_cells},
            tasks={c.name for c in source.task_cells})


class RestoreCells(OverwriteCells):
    """OverwriteCells, after restoring the source notebook's gradebook cells and their order."""

    def preprocess(self, nb, resources):
        source = source_notebook(resources)
        by_name = {cell.name: cell for cell in source.cells}
        locked_sources = {cell.source for cell in source.cells if cell.locked}
        groups, free = {}, []  # gradebook cell id -> [student cells before it..., the cell]
        for cell in nb.cells:
            if cell.metadata.get("nbgrader") == {}:  # a duplicate, emptied by DeduplicateIds
                del cell.metadata["nbgrader"]
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if grade_id is None and cell.source in locked_sources:
                continue  # a copy of a read-only or test cell: the original is kept
            if grade_id in by_name and grade_id not in groups:
                groups[grade_id] = free + [cell]
                free = []
            else:
                free.append(cell)
        cells = []
        for name, source_cell in by_name.items():
            if name in groups:
                restore_cell_type(groups[name][-1], source_cell.cell_type)
                cells += groups[name]
            else:
                self.log.warning("Cell %s was missing or moved; restored in its place", name)
                cells.append(self.restored_cell(source_cell, source.max_scores.get(name), name in source.solutions,
                                                name in source.tasks))
        nb.cells = cells + free
        return super().preprocess(nb, resources)

    def restored_cell(self, source_cell, max_score, is_solution, is_task):
        if max_score is not None or is_task:
            return nbformat.from_dict(self.missing_cell_transform(source_cell, max_score or 0, is_solution=is_solution,
                                                                  is_task=is_task))
        cell = nbformat.from_dict({"cell_type": source_cell.cell_type, "source": source_cell.source, "metadata": {
            "nbgrader": {"grade": False, "solution": is_solution, "locked": source_cell.locked, "task": False,
                         "grade_id": source_cell.name, "checksum": source_cell.checksum, "schema_version": 3}}})
        if cell.cell_type == "code":
            cell.update(outputs=[], execution_count=None)
        return cell


def restore_cell_type(cell, cell_type):
    """Give a cell back its type (nbgrader's own way fails on notebooks without cell ids)."""
    if cell.cell_type == cell_type:
        return
    cell.cell_type = cell_type
    if cell_type == "code":
        cell.update(outputs=[], execution_count=None)
    else:
        cell.pop("outputs", None)
        cell.pop("execution_count", None)
