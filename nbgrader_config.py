"""nbgrader configuration for the course. Run nbgrader commands from this folder."""
import os
from pathlib import Path

COURSE_ROOT = Path(__file__).resolve().parent

from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties, CheckCellMetadata, ClearOutput, ComputeChecksums, DeduplicateIds, GetGrades, IgnorePattern,
    IncludeHeaderFooter, InstantiateTests, LimitOutput, LockCells, OverwriteKernelspec, SaveAutoGrades, SaveCells)
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor  # noqa: E402

from nncourse.guard import RestoreCells  # noqa: E402
from nncourse.profile import GradingProfile  # noqa: E402
from nncourse.preprocessors import (  # noqa: E402
    ClearHiddenRegions, ClearMarkSchemes, ClearSolutionsToBlanks, HideGraderOnlyText)
from nncourse.sandbox import SandboxedExecute  # noqa: E402
from nncourse.verdicts import DecideVerdicts, InsertProbes  # noqa: E402

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = "nn-tutorial3"
c.CourseDirectory.root = str(COURSE_ROOT)
c.CourseDirectory.db_url = f"sqlite:///{COURSE_ROOT / 'gradebook' / 'gradebook.db'}"

# Each training cell takes 10-45 s alone on 2 cores; allow for a loaded machine.
c.Execute.timeout = 600

# Student code runs in a sandbox (nncourse/sandbox.py): nbgrader's own steps, with its Execute
# step replaced by the sandboxed one. Limits: c.SandboxedKernelManager.memory_gib = 8,
# .max_processes = 512, .max_open_files = 512, .max_file_mib = 256, .cpu_seconds = 3600;
# c.SandboxedExecute.max_output_mib = 20, .interrupt_grace = 10.
# NNCOURSE_SANDBOX=off (or c.SandboxedKernelManager.enabled = False) knowingly turns it off.
# Before that, nbgrader's sanitize steps, with OverwriteCells extended to restore deleted and moved
# cells (RestoreCells, nncourse/guard.py), and the assignment's probes put in the hidden set-up cell
# (InsertProbes). After execution, DecideVerdicts decides every test cell in this process from the
# plain data the kernel reported (nncourse/verdicts.py); student code itself is never refused.
c.AssignmentStep.assignments = {"tutorial3": "nncourse.assignments.tutorial3.checks"}
c.Autograde.sanitize_preprocessors = [
    ClearOutput, DeduplicateIds, OverwriteKernelspec, RestoreCells, InsertProbes, GradingProfile, CheckCellMetadata,
]
# Grading profile (nncourse/profile.py): in grading runs the locked training cells evaluate the test set
# every 100 iterations and at the last one, not every 10. Grades are the same, grading is faster
# (docs/benchmark.md). Students' own runs are unchanged. 0 turns it off.
c.GradingProfile.test_every = 100
c.Autograde.autograde_preprocessors = [
    SandboxedExecute, DecideVerdicts, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
    AssignLatePenalties, CheckCellMetadata,
]

# nbgrader's own list, with our versions of the three clearing steps (see nncourse/preprocessors.py).
c.GenerateAssignment.preprocessors = [
    IncludeHeaderFooter, InstantiateTests, LockCells, ClearSolutionsToBlanks, ClearOutput, CheckCellMetadata,
    ComputeChecksums, SaveCells, ClearHiddenRegions, ClearMarkSchemes, ComputeChecksums, CheckCellMetadata,
]
c.GenerateFeedback.preprocessors = [GetGrades, HideGraderOnlyText, CSSHTMLHeaderPreprocessor]

# `nbgrader export`: one column per graded cell, task totals and the total (nncourse/export.py).
c.ExportApp.plugin_class = "nncourse.export.PerCellCsvExport"

# The course's data (MNIST): shown read-only to grading kernels as /data/mnist, named by $MNIST_DIR
# there as in the notebook, and read by the grader's checks.
c.SandboxedKernelManager.data_variable = "MNIST_DIR"
c.SandboxedKernelManager.data_dir = os.environ.get("MNIST_DIR") or str(COURSE_ROOT / "data" / "mnist")
