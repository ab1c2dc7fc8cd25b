"""nbgrader configuration for the course. Run nbgrader commands from this folder."""
import os
from pathlib import Path

COURSE_ROOT = Path(__file__).resolve().parent

from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties, ClearOutput, ComputeChecksums, DeduplicateIds, GetGrades, IgnorePattern,
    IncludeHeaderFooter, InstantiateTests, LimitOutput, LockCells, OverwriteKernelspec, SaveAutoGrades, SaveCells)
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor  # noqa: E402

from nncourse.guard import RestoreCells  # noqa: E402
from nncourse.profile import GradingProfile  # noqa: E402
from nncourse.preprocessors import (  # noqa: E402
    CheckCellMetadata, ClearHiddenRegions, ClearMarkSchemes, ClearSolutionsToBlanks, HideGraderOnlyText)
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
# Grading profile (nncourse/profile.py, docs/grading.md): in grading runs the locked training cells
# evaluate the test set every 100 iterations and at the last one, not every 10 (0 turns this off), and
# the normalised images are read from a copy computed once per machine in the data folder (False
# turns this off), and the training loop predicts the test set 1,000 images at a time, not all
# 10,000 at once (0 turns this off). Grades are the same, grading is faster (docs/benchmark.md).
# Students' own runs are unchanged.
c.GradingProfile.test_every = 100
c.GradingProfile.prepared_data = True
c.GradingProfile.chunk_rows = 1000
# One submission at a time (`nncourse grade` of one student), the kernel starts while the grader
# prepares the notebook and imports these meanwhile, as the notebook's first cell would (no name is
# added to the notebook's namespace). [] turns this off.
c.SandboxedExecute.preload_modules = ["torch", "torchvision.datasets", "matplotlib.pyplot"]
# Each grading process (a batch or Dask worker, or one nbgrader autograde) forks its kernels from a
# warm template that imported ipykernel and the modules above once, instead of starting each kernel's
# Python afresh: about 5 s of CPU less per submission. Each kernel still has a sandbox and a uid of its
# own (docs/sandbox.md). As root only; False starts every kernel on its own.
c.SandboxedKernelManager.fork_server = True
# The template stays up 10 minutes after its grading command ends, for the next one of the same settings
# (grading one submission at a time, say) to take over: that command's kernel starts without importing
# anything. Meanwhile it holds about 0.7 GB (its resident memory, by ps). 0 ends it with its command.
c.SandboxedKernelManager.keep_template_seconds = 600
c.Autograde.autograde_preprocessors = [
    SandboxedExecute, DecideVerdicts, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
    AssignLatePenalties, CheckCellMetadata,
]

# nbgrader's own list, with our versions of the three clearing steps (see nncourse/preprocessors.py).
# CheckCellMetadata, here and above, is nbgrader's with the metadata schema checked once per process.
c.GenerateAssignment.preprocessors = [
    IncludeHeaderFooter, InstantiateTests, LockCells, ClearSolutionsToBlanks, ClearOutput, CheckCellMetadata,
    ComputeChecksums, SaveCells, ClearHiddenRegions, ClearMarkSchemes, ComputeChecksums, CheckCellMetadata,
]
c.GenerateFeedback.preprocessors = [GetGrades, HideGraderOnlyText, CSSHTMLHeaderPreprocessor]

# nbconvert checks the notebook against its schema once per conversion, after every step, not after each of
# them (14 checks in an autograde; `finish` 0.51 s -> 0.47 s, cProfile).
c.Exporter.optimistic_validation = True

# `nbgrader export`: one column per graded cell, task totals and the total (nncourse/export.py).
c.ExportApp.plugin_class = "nncourse.export.PerCellCsvExport"

# The course's data (MNIST): shown read-only to grading kernels as /data/mnist, named by $MNIST_DIR
# there as in the notebook, and read by the grader's checks.
c.SandboxedKernelManager.data_variable = "MNIST_DIR"
c.SandboxedKernelManager.data_dir = os.environ.get("MNIST_DIR") or str(COURSE_ROOT / "data" / "mnist")

# --- Exchange, late submissions and LMS zip collection (docs/course-server.md)
# The exchange folder that `nbgrader release_assignment/fetch_assignment/submit/collect` share:
# nbgrader's default, stated here. On a shared server it must exist with mode 01777; students'
# own configuration (e.g. /etc/jupyter/nbgrader_config.py) names the same folder.
c.Exchange.root = "/srv/nbgrader/exchange"
# Late submissions (AssignLatePenalties, in the autograde steps above): 5 points off per started
# day after the due date (`nbgrader db assignment add tutorial3 --duedate=...`), taken from the
# notebook's score at autograding and never more than it (nncourse/submissions.py).
c.AssignLatePenalties.plugin_class = "nncourse.submissions.LatePenaltyPerPeriod"
c.LatePenaltyPerPeriod.points = 5.0
c.LatePenaltyPerPeriod.period_hours = 24.0
# `nbgrader zip_collect tutorial3` on a Canvas download placed in downloaded/tutorial3/archive/:
# files named lastfirst_[LATE_]<user id>_<file id>_<file name>; the student id is Canvas's user id.
# Each student's one notebook becomes tutorial3.ipynb whatever its name; every skipped file is
# logged with its reason (nncourse/submissions.py).
c.ZipCollectApp.collector_plugin = "nncourse.submissions.OneNotebookPerStudent"
c.FileNameCollectorPlugin.named_regexp = r"(?P<last_first>[^_/]+)_(?:LATE_)?(?P<student_id>\d+)_(?P<file_number>\d+)_(?P<file_id>.+)"
