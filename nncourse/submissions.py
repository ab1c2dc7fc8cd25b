"""nbgrader plugins for how submissions arrive: a late penalty per started period, and a
collector for `nbgrader zip_collect` that finds each student's one notebook in an LMS download
(docs/course-server.md). Both are configured in nbgrader_config.py."""
import math
import re
from pathlib import Path

from nbgrader.plugins import FileNameCollectorPlugin, LateSubmissionPlugin
from nbgrader.utils import find_all_notebooks
from traitlets import Float


class LatePenaltyPerPeriod(LateSubmissionPlugin):
    """Deducts `points` for every started period (one second late is one period), from the
    notebook's score when it is autograded; nbgrader caps the penalty at that score."""

    points = Float(5.0, help="Points deducted per started period late").tag(config=True)
    period_hours = Float(24.0, help="Length of a period, in hours").tag(config=True)

    def late_submission_penalty(self, student_id, score, total_seconds_late):
        periods = math.ceil(total_seconds_late / (self.period_hours * 3600))
        self.log.warning("%s is %d period(s) of %g h late: %g points off", student_id, periods,
                         self.period_hours, periods * self.points)
        return periods * self.points


class OneNotebookPerStudent(FileNameCollectorPlugin):
    """zip_collect's collector for an LMS download. In each extracted file's path (relative to the
    extracted folder), the first folder or file name that matches `named_regexp` names the student
    (its `student_id` group); everything below it is that student's submission. The student's one
    notebook becomes the release's notebook, whatever its name (`Tutorial3 (1).ipynb`,
    `tutorial3-final.ipynb`, `tutorial3-2.ipynb`); with several, the one named like the release is
    taken. Every other file is skipped and logged with the reason, and so is a student with no
    notebook or several differently named ones."""

    IGNORED = {"__MACOSX": "macOS archive metadata", ".ipynb_checkpoints": "Jupyter checkpoint copy"}

    def collect(self, submitted_file):
        if not hasattr(self, "_decisions"):
            self._decisions = self._decide()
        return self._decisions.get(str(Path(submitted_file)))

    def _decide(self):
        """{file: {student_id, file_id}} for the notebooks taken; logs every file skipped."""
        app = self.parent
        extracted = Path(app._format_collect_path(app.extracted_directory))
        release = app.coursedir.format_path(app.coursedir.release_directory, ".", app.coursedir.assignment_id)
        expected = find_all_notebooks(release)
        if len(expected) != 1:
            app.fail(f"{type(self).__name__} needs a release with one notebook; {release} has {expected}")
        expected = expected[0]
        candidates = {}  # student id -> [(file, name as submitted)]
        for path in sorted(p for p in extracted.rglob("*") if p.is_file()):
            student, name, reason = self._owner(path.relative_to(extracted))
            if reason:
                self._skip(path, extracted, reason)
            else:
                candidates.setdefault(student, []).append((path, name))
        decisions = {}
        for student, files in candidates.items():
            notebooks = [(p, n) for p, n in files if p.suffix in self.valid_ext]
            named = [(p, n) for p, n in notebooks if n == expected]
            taken = notebooks if len(notebooks) == 1 else named if len(named) == 1 else []
            for path, name in files:
                if taken and path == taken[0][0]:
                    decisions[str(path)] = {"student_id": student, "file_id": expected}
                    if name != expected:
                        self.log.warning("student %s: taking %s as %s", student, path.relative_to(extracted), expected)
                elif taken:
                    self._skip(path, extracted, f"not a notebook of the assignment ({taken[0][1]} was taken)")
                elif notebooks:
                    self._skip(path, extracted, f"student {student} sent {len(notebooks)} notebooks, none named "
                                                f"{expected}: none collected, collect by hand")
                else:
                    self._skip(path, extracted, f"student {student} sent no notebook: nothing collected")
        return decisions

    def _owner(self, relative):
        """(student id, the file's name as the student sent it, "") or ("", "", why it is skipped)."""
        for ignored, why in self.IGNORED.items():
            if ignored in relative.parts:
                return "", "", why
        if relative.name.startswith("._"):
            return "", "", self.IGNORED["__MACOSX"]
        if relative.suffix in self.parent.extractor_plugin_inst.zip_ext:
            return "", "", "an archive: its files were extracted beside it and are collected one by one"
        for i, part in enumerate(relative.parts):
            match = re.fullmatch(self.named_regexp, part)
            if match:
                name = relative.name if i + 1 < len(relative.parts) else match.group("file_id")
                return match.group("student_id"), name, ""
        return "", "", "no part of its path matches the LMS file name pattern (named_regexp)"

    def _skip(self, path, extracted, reason):
        self.log.warning("skipped %s: %s", path.relative_to(extracted), reason)
