"""Batch autograding: execute submissions in parallel, write the gradebook from one process.

nbgrader grades one submission after another, and several processes must not write one SQLite
gradebook. Here the heavy steps, executing each notebook in a sandboxed kernel and deciding its
verdicts from what the kernel reported (the configured DecideVerdicts step), run on W local
processes or on the workers of a Dask cluster: grader processes, outside the student's kernel.
The driver then runs nbgrader's own autograde for each student, one at a time, with nbgrader's
Execute step replaced by ReplayExecution, which puts in the outputs the worker decided, and
without the verdict step. Everything else (restoring cells, scores, submission records, late
penalties, the files in autograded/) is nbgrader's own code, so the gradebook is what sequential
`nbgrader autograde` writes.

State per student lives in .batch/<assignment>/: <student>.json once graded (with the hash of
the submission: unchanged submissions are skipped unless forced), and the executed notebook, so
a run interrupted after execution does not execute again. logs/<assignment>/<student>.log keeps
each student's log.
"""
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from itertools import chain
from pathlib import Path

import nbformat
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Unicode
from traitlets.config import Config

from . import kernel_env
from .course import Course, kernel_template_recipe
from .grading import autograde_student
from .sandbox import (KernelInAdvance, SandboxedExecute, SandboxedKernelManager, SandboxError, check_sandbox,
                      mark_unrun_cells, sandbox_disabled)
from .template import KernelTemplate
from .verdicts import DecideVerdicts, EarlyVerdicts, checks_digest, package_versions

PACKAGE_COURSE = Path(__file__).resolve().parent.parent


@dataclass
class Outcome:
    """What executing one submission gave."""
    student: str
    sha: str
    executed: str = ""   # executed notebook (JSON); empty if nothing could run
    reason: str = ""     # why grading was not normal: unreadable notebook, dead kernel, timeout...
    seconds: float = 0.0
    worker: str = ""
    decided: bool = False   # the worker ran the verdict steps too
    stand_in: bool = False  # the blank release was graded in its place, every cell failing with the reason
    phases: dict = field(default_factory=dict)  # seconds by phase (execution_phases)
    unfit: str = ""  # the worker that refused the task (no data, other versions): `reason` says why


@dataclass
class Record:
    """What grading one student gave; kept as .batch/<assignment>/<student>.json."""
    student: str
    sha: str
    reason: str = ""
    seconds: float = 0.0
    worker: str = ""
    decided: bool = False
    stand_in: bool = False
    graded: bool = False
    grading_key: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)  # seconds by phase, the driver's steps included

    @classmethod
    def load(cls, path):
        """The record in `path`, or None if there is none (or it is from an older version)."""
        try:
            return cls(**{k: v for k, v in json.loads(Path(path).read_text()).items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return None


# ------------------------------------------------------------------------------ worker side
def timed_out(nb):
    return any(o.get("ename") == "CellTimeoutError" for c in nb.cells for o in c.get("outputs", []))


def execute_submission(student, sha, notebook_json, timeout, threads, assignment, notebook_name, settings=None,
                       verdict_steps=(), environment=None):
    """Run one sanitized notebook in a sandboxed kernel, then decide its verdicts, on a worker.

    Nothing comes from the driver's filesystem: the notebook arrives as an argument, the data
    folder is this machine's own (see worker_data_dir). `threads`
    caps the kernel's BLAS/OpenMP threads; on Dask workers it is $NNCOURSE_KERNEL_THREADS (1).
    `settings` are the driver's configuration sections for these steps; `environment` is the
    driver's grading_environment(): a worker that differs refuses the task (Outcome.unfit)."""
    started, cpu = time.time(), time.process_time()
    worker = f"{os.uname().nodename}:{os.getpid()}"
    config, data_dir = kernel_config(settings, threads)
    problem = ""
    if data_dir is None:
        variable = config.SandboxedKernelManager.get("data_variable", "DATA_DIR")
        problem = (f"the course's data folder is missing on worker {worker}: run ./setup --no-demo there, "
                   f"or set {variable}" + (f" (it is {os.environ[variable]!r} there)" if variable in os.environ else ""))
    elif environment:
        problem = environment_difference(environment, grading_environment(assignment, config))
    if problem:
        return Outcome(student, sha, worker=worker, reason=problem, unfit=dask_address() or worker)
    nb = nbformat.reads(notebook_json, as_version=4)
    advance = KERNELS_IN_ADVANCE.pop(advance_key(settings, threads), None)
    try:
        if advance and not advance.fits(nb):  # another kernel: start that one as usual
            advance.close()
            advance = None
        nb, phases = run_and_decide(nb, config, timeout, assignment, notebook_name, student,
                                    verdict_steps, advance, idle=not spare_cores(config))
        phases["worker CPU (not a phase: its verdicts and messages)"] = time.process_time() - cpu
    finally:
        if advance:
            advance.close()
    return Outcome(student, sha, nbformat.writes(nb), why_not_normal(nb, timeout), round(time.time() - started, 1),
                   worker, decided=bool(verdict_steps), phases={k: round(v, 2) for k, v in phases.items()})


def spare_cores(config):
    """Whether this machine's kernels leave a core for deciding verdicts while they run. A kernel
    on every core (one submission graded alone) does not: its thread pools stall whenever another
    thread takes one of their cores, so verdicts then take only the CPU time it leaves idle."""
    return config.SandboxedKernelManager.get("threads", 1) < len(os.sched_getaffinity(0))


def run_and_decide(nb, config, timeout, assignment, notebook_name, student, verdict_steps, advance, idle=False):
    """Execute the notebook in a sandboxed kernel (`advance`'s, if given) and decide its verdicts
    while the kernel runs (EarlyVerdicts; `idle`: in the CPU time the kernel leaves), the rest
    after it: (notebook, seconds by phase)."""
    from nbgrader.utils import setenv

    with tempfile.TemporaryDirectory(prefix=f"grade-{student}-") as scratch, setenv(NBGRADER_EXECUTION="autograde"):
        resources = {"metadata": {"path": scratch},
                     "nbgrader": {"assignment": assignment, "notebook": notebook_name, "student": student}}
        steps = [step(config=config) for step in verdict_steps]
        early = EarlyVerdicts(steps, resources, idle=idle)
        executing = time.time()
        execute = SandboxedExecute(config=config, timeout=timeout)
        execute.before_cell, execute.after_cell = early.cell_starts, early.cell_done
        nb, resources = execute.preprocess(nb, resources, km=advance.km if advance else None)
        phases = execution_phases(nb, executing, time.time())
        deciding = time.time()
        for step in steps:
            nb, resources = step.preprocess(nb, resources, decided=early.decided(step))
        phases["verdicts after the kernel"] = time.time() - deciding
        phases["verdicts"] = early.seconds
    return nb, phases


def kernel_config(settings, threads):
    """(configuration of this machine's kernels, its data folder or None): the driver's settings,
    the kernels' threads (on Dask workers $NNCOURSE_KERNEL_THREADS, default 1), the data folder."""
    config = settings_config(settings)
    data_dir = worker_data_dir(config)
    config.SandboxedKernelManager.threads = threads or int(os.environ.get("NNCOURSE_KERNEL_THREADS", "1"))
    if data_dir:
        config.SandboxedKernelManager.data_dir = str(data_dir)
    return config, data_dir


KERNELS_IN_ADVANCE = {}  # advance_key -> KernelInAdvance, for the next execute_submission in this process


def advance_key(settings, threads):
    return json.dumps([settings, threads], sort_keys=True, default=str)


def start_kernel_in_advance(settings, threads):
    """Start the kernel of the next execute_submission in this process now, so that it starts and
    imports while the driver prepares the notebook (one submission at a time, in the driver)."""
    config, data_dir = kernel_config(settings, threads)
    if data_dir and not sandbox_disabled(config.SandboxedKernelManager.get("enabled", True)):
        try:
            KERNELS_IN_ADVANCE[advance_key(settings, threads)] = KernelInAdvance(config)
        except SandboxError:
            raise
        except Exception:  # the notebook's own kernel start will say what is wrong
            pass


def stop_kernels_in_advance():
    while KERNELS_IN_ADVANCE:
        KERNELS_IN_ADVANCE.popitem()[1].close()


def execution_phases(nb, started, finished):
    """Seconds of one execution by phase, from the timestamps the kernel client keeps in each cell:
    starting the kernel, each read-only cell by its grade_id, the student's cells, the test cells,
    and stopping the kernel."""
    from datetime import datetime
    from .notebook import meta, role

    def stamp(cell, key):
        return datetime.fromisoformat(cell.metadata.execution[key].replace("Z", "+00:00")).timestamp()
    run = [c for c in nb.cells if c.cell_type == "code" and {"iopub.status.busy", "iopub.status.idle"}
           <= set(c.metadata.get("execution", {}))]
    if not run:
        return {"execution": finished - started}
    phases = {"kernel start": stamp(run[0], "iopub.status.busy") - started}
    for cell in run:
        kind = {"readonly": f"cell {meta(cell).get('grade_id')}", "test": "test cells"}.get(role(cell), "student cells")
        phases[kind] = phases.get(kind, 0.0) + stamp(cell, "iopub.status.idle") - stamp(cell, "iopub.status.busy")
    phases["kernel stop"] = finished - stamp(run[-1], "iopub.status.idle")
    return phases


def start_worker(threads, modules, settings=None):
    """A local worker process's start: the kernels' thread cap for its own numpy and torch (before
    they load), its kernel template for `settings` (it imports torch meanwhile), then the imports
    its first task needs, done while the driver prepares submissions."""
    import importlib
    kernel_env.cap_threads(threads)
    if settings is not None:
        start_kernel_template(settings, threads)
    for name in modules:
        importlib.import_module(name)


def start_kernel_template(settings, threads):
    """Start this process's kernel template for `settings` now (SandboxedKernelManager.fork_server),
    not at its first kernel. Anything wrong is left for that kernel's start to report."""
    config, data_dir = kernel_config(settings, threads)
    km = SandboxedKernelManager(config=config)
    if data_dir and km._forking():
        try:
            check_sandbox(settings)
            KernelTemplate.of(km)
        except Exception:
            pass


def worker_data_dir(config):
    """The data folder on this machine: the one its own variable names, when this machine sets it
    (None if that folder is missing or empty); else the driver's, if this machine has it (local
    workers); else the folder of that name under data/ of this checkout (a Dask worker prepared
    with ./setup)."""
    settings = config.SandboxedKernelManager
    own = os.environ.get(settings.get("data_variable", "DATA_DIR"))
    name = Path(settings.get("data_dir") or "data").name
    candidates = [own] if own else [settings.get("data_dir"), PACKAGE_COURSE / "data" / name]
    return next((Path(d) for d in candidates if d and Path(d).is_dir() and any(Path(d).iterdir())), None)


# What runs and grades any notebook; an assignment's checks module adds its own (PACKAGES).
GRADING_PACKAGES = ("nbgrader", "nbclient", "jupyter_client", "ipykernel")


def grading_environment(assignment, config):
    """What must be the same on the driver and every worker: the packages that run and grade the
    notebook, and the assignment's checks and reference."""
    from .verdicts import AssignmentStep, load_assignment
    module = AssignmentStep(config=config).assignments.get(assignment)
    extra = tuple(getattr(load_assignment(module), "PACKAGES", ())) if module else ()
    return {**package_versions(GRADING_PACKAGES + extra), "checks": checks_digest(module) if module else ""}


def environment_difference(driver, worker):
    """Why a worker with `worker` environment may not grade for a driver with `driver`'s, or ""."""
    differ = [f"{k} {worker.get(k, 'missing')} here, {v} on the driver" for k, v in sorted(driver.items())
              if worker.get(k) != v]
    return f"this worker differs from the driver: {'; '.join(differ)}" if differ else ""


def dask_address():
    """The address of the Dask worker running this task, or "" outside Dask."""
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return ""


def why_not_normal(nb, timeout):
    """The reasons, if any, why an executed notebook was not graded normally."""
    reasons = []
    stopped = nb.metadata.get("nncourse", {}).get("stopped", "")
    if stopped:
        reasons.append(f"execution stopped: {stopped}")
    elif timed_out(nb):
        reasons.append(f"a cell ran longer than the {timeout} s limit and was interrupted")
    return "; ".join(reasons)


# ------------------------------------------------------------------------------ driver side
class ReplayExecution(NbGraderPreprocessor):
    """Stands in for nbgrader's Execute step: puts in the outputs computed on a worker."""
    executed_dir = Unicode("", help="folder holding <student>.executed.ipynb").tag(config=True)

    def preprocess(self, nb, resources):
        student = resources["nbgrader"]["student"]
        executed = nbformat.read(str(Path(self.executed_dir) / f"{student}.executed.ipynb"), as_version=4)
        if [c.source for c in executed.cells] != [c.source for c in nb.cells]:
            raise RuntimeError(f"the executed notebook of {student} does not match its sanitized submission")
        for cell, done in zip(nb.cells, executed.cells):
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = done.outputs, done.execution_count
        return nb, resources


def autograde_steps(config, kind):
    """nbgrader autograde's `sanitize_preprocessors` or `autograde_preprocessors`, as configured."""
    from nbgrader.converters import Autograde
    return config.Autograde.get(kind) or Autograde.class_traits()[kind].default()


def verdict_steps(config):
    """The configured autograde steps that decide verdicts: run on the worker, after execution."""
    return [s for s in autograde_steps(config, "autograde_preprocessors")
            if isinstance(s, type) and issubclass(s, DecideVerdicts)]


def settings_config(settings):
    """A traitlets Config from worker_settings()."""
    return Config({name: Config(values) for name, values in (settings or {}).items()})


def worker_settings(config, steps):
    """The driver's configuration sections that the worker's steps (and their bases) read."""
    names = {base.__name__ for cls in (SandboxedExecute, SandboxedKernelManager, *steps) for base in cls.mro()}
    return {name: dict(config[name]) for name in sorted(names) if name in config}


class Driver:
    """Sanitizes submissions and records results; the only process that writes the gradebook."""

    def __init__(self, course, assignment=None):
        self.course = Course.of(course)
        self.config = self.course.config
        self.assignment = assignment or self.course.assignment
        self.notebook = self.course.notebook_name(self.assignment)
        self.state = self.course.state_folder(self.assignment)
        self.logs = self.course.log_folder(self.assignment)
        self.state.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.key = {}  # grading_key() of this run, set by grade()
        self.restore_seconds = {}  # student -> seconds of the sanitize steps (restoring cells)

    def folder(self, student):
        return self.course.folder("submitted", self.assignment, student)

    def students(self):
        return self.course.students(self.assignment)

    def sha(self, student):
        digest = hashlib.sha256()
        for path in sorted(self.folder(student).rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(self.folder(student))).encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()

    def grading_key(self):
        """Hashes of what decides a grade besides the submission: the assignment's source as the
        gradebook recorded it (cells, points), the assignment's checks and reference, and the
        grading settings (nbgrader_config.py). A change in any of them regrades everyone."""
        from nbgrader.api import Gradebook, MissingEntry

        def digest(*parts):
            return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
        try:
            with Gradebook(self.course.db_url) as gb:
                nb = gb.find_notebook(self.notebook, self.assignment)
                source = digest([(c.name, c.cell_type, c.locked, c.source) for c in nb.source_cells],
                                sorted((g.name, g.max_score) for g in nb.grade_cells))
        except MissingEntry:
            source = ""
        module = self.course.assignments.get(self.assignment)
        checks = checks_digest(module) if module else ""
        settings = digest((self.course.root / "nbgrader_config.py").read_text())
        return {"source": source, "checks": checks, "settings": settings}

    def graded_record(self, student):
        return Record.load(self.state / f"{student}.json")

    def sanitized(self, student):
        """(notebook JSON after nbgrader's sanitize steps, "") or ("", why it cannot run)."""
        path = self.folder(student) / f"{self.notebook}.ipynb"
        if not path.exists():
            return "", f"no notebook submitted ({path.name} is missing)"
        try:
            nb = nbformat.read(str(path), as_version=4)
        except Exception as err:
            return "", f"the notebook cannot be read: {type(err).__name__}: {str(err)[:200]}"
        try:
            started = time.time()
            sanitized = nbformat.writes(self.sanitize(nb, student))
            self.restore_seconds[student] = round(time.time() - started, 2)
            return sanitized, ""
        except Exception as err:  # nbgrader could not restore its cells: grade the student with the reason
            return "", f"the notebook cannot be prepared for grading: {type(err).__name__}: {str(err)[:200]}"

    def sanitize(self, nb, student):
        resources = {"nbgrader": {"notebook": self.notebook, "assignment": self.assignment, "student": student,
                                  "db_url": self.course.db_url}}
        for step in autograde_steps(self.config, "sanitize_preprocessors"):
            nb, resources = step(config=self.config).preprocess(nb, resources)
        return nb

    def stand_in(self, outcome):
        """For a submission that could not run: the blank release in its place, every code cell
        failing with the reason, so that nbgrader records 0 for each test and keeps the reason."""
        student = outcome.student
        folder = self.state.parent / "stand-ins" / student / self.assignment
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(self.folder(student), folder, ignore=shutil.ignore_patterns(f"{self.notebook}.ipynb"))
        release = self.course.notebook("release", assignment=self.assignment)
        shutil.copy(release, folder / f"{self.notebook}.ipynb")
        nb = self.sanitize(nbformat.read(str(release), as_version=4), student)  # outputs cleared
        mark_unrun_cells(nb, outcome.reason)
        return replace(outcome, executed=nbformat.writes(nb), stand_in=True, decided=False), folder.parent.parent

    def cached_outcome(self, student, sha):
        """The execution of this exact submission kept by an interrupted run, if any."""
        meta, executed = self.state / f"{student}.outcome.json", self.state / f"{student}.executed.ipynb"
        if not (meta.exists() and executed.exists()):
            return None
        kept = json.loads(meta.read_text())
        if kept.get("sha") != sha or kept.get("grading_key") != self.key:
            return None
        fields = {k: v for k, v in kept.items() if k in Outcome.__dataclass_fields__ and k not in ("student", "sha")}
        return Outcome(student, sha, **dict(fields, executed=executed.read_text()))

    def save_outcome(self, outcome):
        (self.state / f"{outcome.student}.executed.ipynb").write_text(outcome.executed)
        kept = {k: v for k, v in asdict(outcome).items() if k != "executed"}
        (self.state / f"{outcome.student}.outcome.json").write_text(json.dumps({**kept, "grading_key": self.key}))

    def autograde(self, outcome, submitted_dir=None):
        """nbgrader autograde for one student, replaying the execution (and verdicts) of a worker."""
        config = Course.load(self.course.root).config  # a fresh copy, changed below
        decided = verdict_steps(config) if outcome.decided else []
        config.Autograde.autograde_preprocessors = [ReplayExecution if issubclass(s, Execute) else s
                                                    for s in autograde_steps(config, "autograde_preprocessors")
                                                    if s not in decided]
        config.ReplayExecution.executed_dir = str(self.state)
        if submitted_dir:
            config.CourseDirectory.submitted_directory = str(submitted_dir.relative_to(self.course.root))
        return autograde_student(self.course, outcome.student, self.assignment, config)

    def finish(self, outcome):
        """Write one student's grades (nbgrader autograde), log and record them. A submission that
        no worker could grade (Outcome.unfit) is logged, not graded: the next run grades it."""
        if outcome.unfit:
            record = Record(outcome.student, outcome.sha, outcome.reason, worker=outcome.worker)
            (self.logs / f"{record.student}.log").write_text(f"student: {record.student}\nnot graded: {record.reason}\n")
            return record
        submitted_dir = None
        if not outcome.executed or outcome.stand_in:
            outcome, submitted_dir = self.stand_in(outcome)
        self.save_outcome(outcome)
        started = time.time()
        result = self.autograde(outcome, submitted_dir)
        phases = dict(outcome.phases, **{"restore cells": self.restore_seconds.get(outcome.student, 0.0),
                                         "autograde and gradebook": round(time.time() - started, 2)})
        graded = bool(result.get("success"))
        reason = outcome.reason if graded else "; ".join(filter(None, [outcome.reason,
                                                                        "nbgrader autograde failed (see log)"]))
        record = Record(outcome.student, outcome.sha, reason, outcome.seconds, outcome.worker, outcome.decided,
                        outcome.stand_in, graded, self.key, phases)
        (self.logs / f"{record.student}.log").write_text("\n".join([
            f"student: {record.student}", f"worker: {record.worker or '-'}", f"seconds: {record.seconds}",
            f"reason: {record.reason or 'none'}", "", result.get("log", ""), result.get("error", "") or ""]))
        if graded:
            (self.state / f"{record.student}.json").write_text(json.dumps(asdict(record), indent=1))
        return record


class Deferred:
    """A task run in this process when its result is asked for."""

    def __init__(self, fn, kwargs):
        self.fn, self.kwargs = fn, kwargs

    def result(self):
        return self.fn(**self.kwargs)


class Runner:
    """Runs worker tasks on a Dask cluster (given its scheduler's address), on local processes,
    or, for one at a time, in this process. Local processes import `modules` and start the kernel
    template for `settings` (worker_settings) as soon as they start."""

    def __init__(self, workers, scheduler=None, log=print, threads=None, modules=(), settings=None):
        self.client = self.pool = None
        self.calls, self.log = {}, log  # task -> (fn, kwargs), to send it elsewhere
        if scheduler:
            from distributed import Client
            self.client = Client(scheduler)
        elif workers > 1:  # fresh processes: a forked copy of this one could inherit torch's
            # OpenMP thread pool in a broken state (InsertProbes computes inputs with torch) and hang
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=start_worker, initargs=(threads or 1, modules, settings))
            for _ in range(workers):  # each submission starts one process: all start now, not at the first tasks
                self.pool.submit(int)

    def in_process(self):
        return not (self.client or self.pool)

    def submit(self, fn, _workers=None, **kwargs):
        if self.client:  # a task whose worker vanishes is given to another worker
            task = self.client.submit(fn, **kwargs, pure=False, retries=2, workers=_workers)
        elif self.pool:
            task = self.pool.submit(fn, **kwargs)
        else:
            task = Deferred(fn, kwargs)
        self.calls[task] = (fn, kwargs)
        return task

    def finished(self, tasks):
        if self.client:
            from distributed import as_completed as dask_as_completed
            return dask_as_completed(list(tasks))
        if self.pool:
            return as_completed(list(tasks))
        return iter(list(tasks))

    def elsewhere(self, task, refused):
        """The task again, on a Dask worker not in `refused`; None if there is none."""
        if not self.client:
            return None  # local workers share this machine: they would all refuse
        others = [w for w in self.client.scheduler_info()["workers"] if w not in refused]
        if not others:
            return None
        fn, kwargs = self.calls[task]
        return self.submit(fn, _workers=others, **kwargs)

    def outcomes(self, tasks):
        """Outcomes as tasks finish. A task that fails as a whole becomes an outcome with its
        reason; a task that a worker refused (Outcome.unfit) goes to another worker, if any."""
        tasks, refused = dict(tasks), {}
        finished = self.finished(tasks)
        for task in finished:
            student, sha = tasks[task]
            try:
                outcome = task.result()
            except SandboxError:
                raise  # no sandbox on a worker: stop, rather than grade without it
            except Exception as err:
                outcome = Outcome(student, sha, reason=f"the grading task failed: {type(err).__name__}: {err}")
            if outcome.unfit:
                refused.setdefault(student, {})[outcome.unfit] = outcome.reason
                again = self.elsewhere(task, refused[student])
                self.log(f"  {student}: refused by worker {outcome.unfit} ({outcome.reason}); "
                         + ("sent to another worker" if again else "no other worker: not graded"))
                if again:
                    tasks[again] = (student, sha)
                    finished.add(again)
                    continue
                outcome = replace(outcome, reason="no worker could grade it: " + "; ".join(
                    f"{w}: {why}" for w, why in refused[student].items()))
            yield outcome

    def close(self):
        if self.pool:
            self.pool.shutdown(cancel_futures=True)
        if self.client:
            self.client.close()


class Progress:
    """One line on stderr: a bar, counts and an ETA."""

    def __init__(self, total):
        self.total, self.done, self.started = total, 0, time.time()

    def step(self):
        self.done += 1
        elapsed = time.time() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        filled = int(30 * self.done / self.total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} graded, "
                         f"elapsed {elapsed:.0f}s, ETA {eta:.0f}s " + ("\n" if self.done == self.total else ""))
        sys.stderr.flush()


REGRADE_REASONS = {"source": "the assignment's source in the gradebook changed (tests, points or cells)",
                   "checks": "the assignment's checks or reference changed",
                   "settings": "the grading settings (nbgrader_config.py) changed"}


def regrade_reasons(record, sha, key):
    """Why a student needs grading ([] if their record is up to date)."""
    if record is None:
        return ["not graded yet"]
    reasons = [] if record.sha == sha else ["the submission changed"]
    return reasons + [text for part, text in REGRADE_REASONS.items() if record.grading_key.get(part) != key[part]]


def longest_first(todo, records):
    """`todo` ([(student, sha)]) in the order to start them: students never graded first, then the
    others by the seconds their last grading took, longest first, so that the batch does not end
    with one long submission running alone (records: {student: Record or None})."""
    def last_seconds(item):
        record = records.get(item[0])
        return record.seconds if record and record.seconds else float("inf")
    return sorted(todo, key=last_seconds, reverse=True)


def default_workers():
    return len(os.sched_getaffinity(0))


def grade(course, students=None, workers=None, scheduler=None, force=False, assignment=None, log=print):
    """Grade the named students (default: every submission). Returns {student: Record}."""
    driver = Driver(course, assignment)
    names = students or driver.students()
    missing = [s for s in names if not driver.folder(s).is_dir()]
    if missing:
        raise FileNotFoundError(f"no submission folder for {missing} in "
                                f"{driver.course.root / driver.course.directory.submitted_directory}")
    results, todo, why, before = {}, [], {}, {}
    key = driver.key = driver.grading_key()
    for student in names:
        sha = driver.sha(student)
        record = before[student] = driver.graded_record(student)
        changed = regrade_reasons(record, sha, key)
        if not force and not changed:
            results[student] = record
        else:
            todo.append((student, sha))
            for reason in changed or ["--force"]:
                why[reason] = why.get(reason, 0) + 1
    todo = longest_first(todo, before)
    workers = max(1, min(workers or default_workers(), len(todo)))
    # local kernels share this machine's cores; a Dask worker decides for itself (execute_submission)
    threads = None if scheduler else max(1, default_workers() // workers)
    log(f"{len(names)} submissions: {len(todo)} to grade, {len(names) - len(todo)} unchanged since graded; "
        f"{workers} at a time" + (f" on {scheduler}" if scheduler else f", {threads} thread(s) each"))
    for reason, count in why.items():
        log(f"  {count} to grade because {reason}")
    if not todo:
        return results
    module = driver.course.assignments.get(driver.assignment)
    steps = verdict_steps(driver.config)
    settings = worker_settings(driver.config, steps)
    runner = Runner(workers, scheduler, log=log, threads=threads, modules=[__name__, *filter(None, [module])],
                    settings=settings)
    try:
        if not scheduler:
            check_sandbox(settings)  # fail before grading anyone; Dask workers check their own machine
        if runner.in_process():
            KernelTemplate.recipe_file = kernel_template_recipe(driver.course.root)  # the next run's early start
            start_kernel_in_advance(settings, threads)
        # computed from the settings the workers get, as each worker computes its own
        environment = grading_environment(driver.assignment, settings_config(settings))
        ready, futures = [], {}
        for student, sha in todo:
            cached = None if force else driver.cached_outcome(student, sha)
            notebook_json, reason = ("", "") if cached else driver.sanitized(student)
            if cached or reason:
                ready.append(cached or Outcome(student, sha, reason=reason))
            else:
                futures[runner.submit(execute_submission, student=student, sha=sha, notebook_json=notebook_json,
                                      timeout=driver.config.Execute.get("timeout", 600), threads=threads,
                                      assignment=driver.assignment, notebook_name=driver.notebook,
                                      settings=settings, verdict_steps=steps,
                                      environment=environment)] = (student, sha)
        bar = Progress(len(todo))
        for outcome in chain(ready, runner.outcomes(futures)):
            results[outcome.student] = driver.finish(outcome)
            bar.step()
    finally:
        runner.close()
        stop_kernels_in_advance()
    return results
