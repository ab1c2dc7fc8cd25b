"""A course, as its nbgrader_config.py describes it: built once, and passed to every command.

It knows the course folder, nbgrader's folder layout (CourseDirectory.format_path), the gradebook,
the assignments with their checks modules (c.AssignmentStep.assignments) and notebooks, and the
data folder that grading kernels see (c.SandboxedKernelManager.data_dir). Nothing here is about
one particular course: those facts are in nbgrader_config.py and the assignment's folder.
"""
import glob
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

CONFIG_FILE = "nbgrader_config.py"
STATE_FOLDER = ".batch"  # the batch grader's records and executed notebooks, in the course folder


def kernel_template_recipe(root):
    """Where a grading run saves its kernel template's recipe, for the next run's early start
    (template.KernelTemplate.start_early): known before the course's configuration is read."""
    return Path(root) / STATE_FOLDER / "kernel-template.json"


@dataclass(eq=False)
class Course:
    root: Path
    config: object  # traitlets Config, as nbgrader_config.py left it

    @classmethod
    def load(cls, root):
        from traitlets.config.loader import PyFileConfigLoader
        root = Path(root).resolve()
        if not (root / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{root} is not a course folder (it has no {CONFIG_FILE}): "
                                    f"run from the course folder or pass --course <folder>")
        return cls(root, PyFileConfigLoader(CONFIG_FILE, path=str(root)).load_config())

    @classmethod
    def of(cls, course):
        """`course` itself if it is a Course, else the course in that folder."""
        return course if isinstance(course, Course) else cls.load(course)

    @cached_property
    def directory(self):
        from nbgrader.coursedir import CourseDirectory
        return CourseDirectory(config=self.config, root=str(self.root))

    @property
    def db_url(self):
        return self.directory.db_url

    @property
    def assignments(self):
        """{assignment name: module of its probes and checks}."""
        return dict(self.config.AssignmentStep.get("assignments", {}))

    @property
    def assignment(self):
        """The course's assignment, when it has one (commands default to it)."""
        names = sorted(self.assignments)
        if len(names) != 1:
            raise ValueError(f"the course has {len(names)} assignments ({', '.join(names) or 'none'}): name one")
        return names[0]

    def checks(self, assignment=None):
        """The assignment's checks module, or None if its verdicts are not configured."""
        from .verdicts import load_assignment
        module = self.assignments.get(assignment or self.assignment)
        return load_assignment(module) if module else None

    def material(self, name, assignment=None):
        """A module of the assignment's own folder, next to its checks: `samples` (sample students),
        `data` (provisioning of its data)."""
        import importlib
        module = self.assignments.get(assignment or self.assignment)
        if not module:
            raise ValueError(f"no checks module is configured for {assignment or self.assignment} "
                             f"(c.AssignmentStep.assignments in {CONFIG_FILE})")
        package = module.rpartition(".")[0]
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            raise ValueError(f"the assignment's folder has no {name}.py ({package}): {err}") from None

    def folder(self, step, assignment=None, student="."):
        """nbgrader's folder for `step` (source, release, submitted, autograded, feedback)."""
        step_folder = getattr(self.directory, f"{step}_directory")
        return Path(self.directory.format_path(step_folder, student, assignment or self.assignment))

    def notebook_name(self, assignment=None):
        """The name of the assignment's notebook (its one .ipynb in source/)."""
        found = sorted(p.stem for p in self.folder("source", assignment).glob("*.ipynb"))
        if len(found) != 1:
            raise ValueError(f"{self.folder('source', assignment)} should hold one notebook, not {found}")
        return found[0]

    def notebook(self, step, student=".", assignment=None):
        return self.folder(step, assignment, student) / f"{self.notebook_name(assignment)}.ipynb"

    def students(self, assignment=None):
        """Students with a submission folder for the assignment."""
        submitted = self.root / self.directory.submitted_directory
        pattern = self.directory.format_path(self.directory.submitted_directory, "*", assignment or self.assignment)
        return sorted(Path(p).relative_to(submitted).parts[0] for p in glob.glob(pattern) if os.path.isdir(p))

    @property
    def data_dir(self):
        """The folder grading kernels see read-only (and the grader's checks read)."""
        from .sandbox import configured_data_dir
        return Path(configured_data_dir(self.config))

    def log_folder(self, assignment=None):
        return self.root / "logs" / (assignment or self.assignment)

    def state_folder(self, assignment=None):
        return self.root / STATE_FOLDER / (assignment or self.assignment)
