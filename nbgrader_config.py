"""nbgrader configuration for the course. Run nbgrader commands from this folder."""
import sys
from pathlib import Path

COURSE_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(COURSE_ROOT))  # the course's nbgrader plugins live in ./nncourse

from nbgrader.preprocessors import (  # noqa: E402
    CheckCellMetadata, ClearOutput, ComputeChecksums, GetGrades, IncludeHeaderFooter, InstantiateTests,
    LockCells, SaveCells)
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402

from nncourse import kernel_env  # noqa: E402
from nncourse.preprocessors import (  # noqa: E402
    ClearHiddenRegions, ClearMarkSchemes, ClearSolutionsToBlanks, HideGraderOnlyText)

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = "nn-tutorial3"
c.CourseDirectory.root = str(COURSE_ROOT)
c.CourseDirectory.db_url = f"sqlite:///{COURSE_ROOT / 'gradebook' / 'gradebook.db'}"

# Each training cell takes 10-45 s alone on 2 cores; allow for a loaded machine.
c.Execute.timeout = 600

# nbgrader's own list, with our versions of the three clearing steps (see nncourse/preprocessors.py).
c.GenerateAssignment.preprocessors = [
    IncludeHeaderFooter, InstantiateTests, LockCells, ClearSolutionsToBlanks, ClearOutput, CheckCellMetadata,
    ComputeChecksums, SaveCells, ClearHiddenRegions, ClearMarkSchemes, ComputeChecksums, CheckCellMetadata,
]
c.GenerateFeedback.preprocessors = [GetGrades, HideGraderOnlyText, CSSHTMLHeaderPreprocessor]

# `nbgrader export`: one column per graded cell, task totals and the total (nncourse/export.py).
c.ExportApp.plugin_class = "nncourse.export.PerCellCsvExport"

# Grading kernels inherit this environment: MNIST's location ($MNIST_DIR) and a faster allocator.
kernel_env.apply(COURSE_ROOT / "data" / "mnist")
