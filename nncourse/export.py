"""`nbgrader export` plugin: one row per student and assignment, one column per graded cell,
task totals and the total, written with Python's csv module (fields quoted where needed).
nbgrader_config.py makes it the default, so `nbgrader export` writes grades.csv in this form."""
import csv

from nbgrader.api import MissingEntry
from nbgrader.plugins import ExportPlugin

from .notebook import task_of

FIRST = ["assignment", "student_id", "last_name", "first_name", "email", "timestamp"]
LAST = ["total", "max_score", "needs_manual_grade"]


class PerCellCsvExport(ExportPlugin):
    """Grades per cell, per task and in total, for every submission in the gradebook."""

    def records(self, gradebook):
        names = self.assignment or sorted(a.name for a in gradebook.assignments)
        students = self.student or sorted(s.id for s in gradebook.students)
        for name in names:
            for student_id in students:
                try:
                    submission = gradebook.find_submission(name, student_id)
                except MissingEntry:
                    continue
                student = submission.student
                scores = {g.name: float(g.score) for nb in submission.notebooks for g in nb.grades}
                record = dict(assignment=name, student_id=student_id, last_name=student.last_name or "",
                              first_name=student.first_name or "", email=student.email or "",
                              timestamp=submission.timestamp.isoformat() if submission.timestamp else "",
                              total=submission.score, max_score=submission.max_score,
                              needs_manual_grade=int(submission.needs_manual_grade), **scores)
                for cell, score in scores.items():
                    key = f"{task_of(cell)}_total"
                    record[key] = record.get(key, 0.0) + score
                yield record

    def export(self, gradebook):
        dest = self.to or "grades.csv"
        records = list(self.records(gradebook))
        middle = sorted({k for r in records for k in r} - set(FIRST) - set(LAST),
                        key=lambda k: (k.endswith("_total"), k))
        self.log.info("Exporting %d submissions, per cell, to %s", len(records), dest)
        with open(dest, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIRST + middle + LAST, restval="")
            writer.writeheader()
            writer.writerows(records)
