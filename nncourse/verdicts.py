"""Verdicts decided in the grader's process, from plain data that the student's kernel reports.

An assignment is a module (see nncourse/assignments/tutorial3/checks.py) that provides:
- PROBES_FILE: kernel-side code; `probe(test, notebook_globals, inputs)` returns a dict of arrays;
- SETUP_CELL: grade_id of the hidden set-up cell that receives the probes at grading;
- inputs(): the arrays the grader chooses as the probes' inputs (weights, activations...);
- CHECKS: {test grade_id: Check}, each deciding one test cell from its report;
- STAND_INS: {test grade_id: {name: source}}, definitions put in the kernel after that test
  when the student's own is missing, so that later tasks can still run;
- context(reports, nb, grader): what checks may consult besides their own report: the reports
  of the tests up to the one decided, and the notebook up to its cell;
- optionally warm_up(grader): loads what the checks will need, while the kernel runs;
- optionally PACKAGES: packages whose versions every batch worker must share with the driver.

The flow, as nbgrader steps (nbgrader_config.py):
1. InsertProbes (sanitize, before the kernel starts): the set-up cell gets the probes and the
   inputs; each hidden test cell calls `_report("<its grade_id>")`.
2. The kernel runs the notebook. `_report` calls the student's code on the inputs and adds one
   display output to the cell: {"test": grade_id, "npz": base64 of an .npz}.
3. DecideVerdicts (after execution, before SaveAutoGrades): reads each test cell's report with
   allow_pickle=False, size-capped and schema-checked, runs its check here, and replaces the
   cell's outputs by the verdict: none (passed), `Test failed: <message>` (an error output), or
   a partial score. A missing, duplicated, malformed or oversized report fails that test only.
   Batch workers decide each test as soon as its cell has run (EarlyVerdicts), while the kernel
   goes on; a test sees only the notebook up to its cell, so the verdict is the same either way.
"""
import ast
import base64
import binascii
import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nbformat.v4 import new_output
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Dict, Integer

from . import kernel_env

REPORT_MIME = "application/vnd.nncourse.report+json"
MIB = 1024 ** 2


class Failed(Exception):
    """A failed check; its message is what the student reads (what is wrong, never the answer)."""


class AfterTheKernel(Exception):
    """Raised by not_beside_the_kernel: the verdict is decided again once the kernel has ended."""


def not_beside_the_kernel(what):
    """For a check about to start `what` (another kernel, say) that would take cores from a kernel that
    has every core: in EarlyVerdicts' idle thread it stops here, and the verdict waits for the kernel."""
    if kernel_env.is_idle():
        raise AfterTheKernel(what)


@dataclass
class Check:
    """How one test cell is decided: its report's fields (name or regex -> dtype kinds and,
    optionally, shape) and the function that judges them (raises Failed, or returns a fraction
    of the points for partial credit)."""
    judge: object
    fields: dict = field(default_factory=dict)
    required: tuple = ()

    def schema_problem(self, report):
        """Why `report` does not fit the schema, or ""."""
        for key, value in report.items():
            spec = next((s for pattern, s in self.fields.items() if re.fullmatch(pattern, key)), None)
            if key == "error":
                spec = ("U", ())
            if spec is None:
                return f"unexpected field {key!r}"
            kinds, shape = spec if isinstance(spec, tuple) else (spec, None)
            if value.dtype.kind not in kinds:
                return f"field {key!r} has dtype {value.dtype}"
            if shape is not None and value.shape != shape:
                return f"field {key!r} has shape {value.shape}"
        if "error" not in report:
            missing = [k for k in self.required if k not in report]
            if missing:
                return f"fields {missing} are missing"
        return ""


@dataclass
class Verdict:
    score: float  # fraction of the points, 0..1
    message: str = ""


class LazyModule:
    """Module `name`, imported at the first use of one of its attributes: a checks module can then
    be imported (for its constants, its probes' source, its inputs) before a slow import it needs
    only to decide verdicts, which a batch worker does while the kernel runs."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attribute):
        if self._name not in sys.modules:
            with kernel_env.at_normal_priority():
                importlib.import_module(self._name)
        return getattr(sys.modules[self._name], attribute)

    def __repr__(self):
        return f"<module {self._name!r}, imported at its first use>"


# checks module name -> (where its files are, their digest) when load_assignment imported it
IMPORTED_CHECKS = {}
IMPORTING = threading.RLock()  # a worker's tasks and verdict threads load the checks concurrently


def load_assignment(module_name):
    """The assignment's checks module. It is imported again when the checks' files (checks_files)
    changed since they were imported, or when the name now leads to another place: a long-lived
    Dask worker, or a process that grades several courses, never judges with stale checks.
    One notebook keeps the module it started with (AssignmentStep.assignment)."""
    with IMPORTING:
        where, files = checks_files(module_name)
        now = (where, files_digest(where, files))
        loaded = sys.modules.get(module_name)
        if loaded is not None:
            if module_name not in IMPORTED_CHECKS:  # imported by other code: trust its files as they are
                IMPORTED_CHECKS[module_name] = (checks_place(module_name, loaded), now[1])
            if IMPORTED_CHECKS[module_name] != now:
                forget_checks(module_name, files)
        module = importlib.import_module(module_name)
        IMPORTED_CHECKS[module_name] = now
        return module


def own_package(module_name):
    """The package that is the checks' own (its files are theirs, reimported with them), or None when
    the checks module is a top-level file or sits in a package that holds this machinery too."""
    package = module_name.rpartition(".")[0]
    return package if package and not __name__.startswith(package + ".") else None


def checks_place(module_name, module):
    package = own_package(module_name)
    where = getattr(sys.modules.get(package) if package else module, "__file__", None)
    return where and (Path(where).parent if package else Path(where))


def checks_files(module_name):
    """(where the checks are, their Python files), as importing `module_name` would find them now,
    looked up afresh, not in the modules already imported: the importable .py files in the checks'
    own package and its subpackages, or the checks module's file alone. (None, []) when it is not found."""
    from importlib.machinery import PathFinder
    package = own_package(module_name)
    name = package or module_name
    parent, _, last = name.rpartition(".")
    importlib.invalidate_caches()
    try:
        spec = PathFinder.find_spec(last, importlib.import_module(parent).__path__ if parent else None)
    except (ImportError, AttributeError, ValueError):
        spec = None
    if spec is None or not (spec.origin or spec.submodule_search_locations):
        return None, []
    if package:
        folder = Path(list(spec.submodule_search_locations)[0])
        return folder, sorted(f for f in folder.rglob("*.py") if importable(f.relative_to(folder)))
    return Path(spec.origin), [Path(spec.origin)]


def importable(relative):
    """Whether a .py file at this path in a package could be imported: every folder and the file's
    stem are Python names. Editor leftovers (.ipynb_checkpoints/, .#checks.py, 'checks (copy).py')
    are not the checks."""
    return all(part.isidentifier() for part in (*relative.parts[:-1], relative.stem))


def files_digest(place, files):
    """Hash of the names (relative to the folder `place`) and contents of `files` ("" for none)."""
    if not files:
        return ""
    root = place if place.is_dir() else place.parent
    parts = [(f.relative_to(root).as_posix(), f.read_text()) for f in files]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def forget_checks(module_name, files):
    """Drop the checks (their own package, or the module alone) from the imported modules, and the
    bytecode cached for their files: it is trusted when a file changed within the same second and
    kept its size. A cache that cannot be removed (a read-only checkout) is left alone."""
    package = own_package(module_name)
    for name in [m for m in sys.modules if m == module_name or (package and (m == package or
                                                                             m.startswith(package + ".")))]:
        del sys.modules[name]
    for source in files:
        for cached in (source.parent / "__pycache__").glob(f"{source.stem}.*.pyc"):
            with contextlib.suppress(OSError):
                cached.unlink()


def checks_digest(module_name):
    """Hash of the checks' files (checks_files), "" if they are not found."""
    return files_digest(*checks_files(module_name))


class Memo:
    """Results computed once per process for numeric arrays equal to the last bit (the same dtypes,
    shapes and bytes), under a key of the caller's. Other kinds of arrays are never remembered."""

    def __init__(self):
        self.known = {}

    def get(self, key, arrays, compute):
        digest = arrays_key(arrays)
        if digest is None:
            return compute()
        if (key, digest) not in self.known:
            self.known[key, digest] = compute()
        return self.known[key, digest]


def arrays_key(arrays):
    """A key for numeric arrays (their dtypes, shapes and bytes), or None for any other kind."""
    arrays = [np.asarray(a) for a in arrays]
    if not all(a.dtype.kind in "biuf" for a in arrays):
        return None
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(f"{a.dtype.str}{a.shape}".encode() + a.tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------ kernel side
KERNEL_CELL = '''# Used by the autograder: reports what your code returns on the grader's inputs. Leave it in place.
def _make_reporter(notebook, probes_source, inputs, mime):
    import base64, io
    import numpy as np
    module = {{"__name__": "grading_probes"}}
    exec(compile(probes_source, "grading_probes", "exec"), module)
    # the inputs: base64 text of an .npz file, or the absolute path of that file (read-only here)
    with np.load(inputs if inputs.startswith("/") else io.BytesIO(base64.b64decode(inputs)), allow_pickle=False) as npz:
        inputs = {{key: npz[key] for key in npz.files}}

    def report(test):
        try:
            fields = module["probe"](test, notebook, inputs)
            buffer = io.BytesIO()
            np.savez(buffer, **fields)
        except Exception as err:
            buffer = io.BytesIO()
            np.savez(buffer, error=np.array(f"the test could not run: {{type(err).__name__}}: {{err}}"))
        from IPython.display import display
        display({{mime: {{"test": test, "npz": base64.b64encode(buffer.getvalue()).decode()}}}}, raw=True)
    return report


_report = _make_reporter(globals(), {source!r}, {inputs!r}, {mime!r})
del _make_reporter
'''
HIDDEN = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")


def encode_arrays(arrays):
    """{name: array} as base64 text of an .npz file."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return base64.b64encode(buffer.getvalue()).decode()


def decode_arrays(text):
    """The {name: array} of encode_arrays' text, read without pickles. binascii.Error, ValueError,
    OSError or EOFError if it is not such text."""
    with np.load(io.BytesIO(base64.b64decode(text, validate=True)), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


KERNEL_CELLS = weakref.WeakKeyDictionary()  # checks module -> its set-up cell, gone with the module
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nncourse"


def kernel_cell(assignment):
    """Source of the hidden set-up cell: the probes, the inputs, and `_report`. The source is kept
    on disk under a digest of what makes it (fixed_inputs_key), so that a grader reads it instead of
    drawing the inputs again."""
    if assignment not in KERNEL_CELLS:
        def compute():
            return kernel_cell_source(Path(assignment.PROBES_FILE).read_text(), assignment.inputs())
        KERNEL_CELLS[assignment] = disk_cached(f"set-up-cell-{assignment.__name__}", fixed_inputs_key(assignment),
                                               compute)
    return KERNEL_CELLS[assignment]


def kernel_cell_source(probes_source, inputs):
    """The set-up cell for the probes' source and their inputs ({name: array})."""
    body = KERNEL_CELL.format(source=probes_source, inputs=encode_arrays(inputs), mime=REPORT_MIME)
    return f"{HIDDEN[0]}\n{body}{HIDDEN[1]}"


def package_versions(names):
    """{name: installed version, or "not installed"}."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"
    return {name: installed(name) for name in names}


def fixed_inputs_key(assignment):
    """Digest of the checks' files, this file, and the versions of the packages that draw the inputs:
    the key of what is computed from the checks' fixed inputs alone (the set-up cell, cached_arrays)."""
    packages = package_versions(("numpy", *getattr(assignment, "PACKAGES", ())))
    parts = [checks_digest(assignment.__name__), Path(__file__).read_text(), packages]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def cached_arrays(assignment, name, compute):
    """compute(), a dict of arrays made from the assignment's fixed inputs alone, kept on disk as its
    set-up cell is: a grader reads them instead of importing what computes them."""
    return decode_arrays(disk_cached(f"{name}-{assignment.__name__}", fixed_inputs_key(assignment),
                                     lambda: encode_arrays(compute())))


def disk_cached(name, key, compute):
    """compute(), a string, kept in CACHE as <name>-<key>; other keys of `name` are removed when a
    new one is written. Without a writable cache folder, computed each time."""
    path = CACHE / f"{name}-{key}"
    try:
        return path.read_text()
    except OSError:
        pass
    value = compute()
    try:
        CACHE.mkdir(mode=0o700, parents=True, exist_ok=True)
        for old in CACHE.glob(f"{name}-*"):
            old.unlink(missing_ok=True)
        partial = CACHE / f".{name}-{key}.{os.getpid()}.{threading.get_ident()}"
        partial.write_text(value)
        os.replace(partial, path)
    except OSError:
        pass
    return value


def report_call(test):
    return f'_report("{test}")'


class AssignmentStep(NbGraderPreprocessor):
    """A step that looks up the module of the notebook's assignment."""
    assignments = Dict(help="nbgrader assignment name -> module with its probes and checks, "
                            "e.g. {'tutorial3': 'nncourse.assignments.tutorial3.checks'}").tag(config=True)

    def assignment(self, resources):
        """(the checks module, its name): the same module for every step of one notebook."""
        name = resources.get("nbgrader", {}).get("assignment")
        module = self.assignments.get(name)
        if not module:
            return None, module
        pinned = resources.setdefault("nncourse_checks", {})
        if module not in pinned:
            pinned[module] = Pinned(load_assignment(module))
        return pinned[module].module, module


class Pinned:
    """A notebook's checks module in its resources; nbconvert deep-copies resources, this stays itself."""

    def __init__(self, module):
        self.module = module

    def __deepcopy__(self, memo):
        return self


class InsertProbes(AssignmentStep):
    """Sanitize step: the set-up cell gets the probes and inputs; stand-ins ride along in the
    metadata of the test cells after which they may be needed (read by SandboxedExecute)."""

    def preprocess(self, nb, resources):
        for cell in nb.cells:  # only the grader writes this metadata
            cell.metadata.pop("nncourse", None)
        nb.metadata.pop("nncourse", None)
        assignment, module = self.assignment(resources)
        if assignment is None:
            return nb, resources
        for cell in nb.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if grade_id == assignment.SETUP_CELL:
                cell.source = kernel_cell(assignment)
                cell.metadata.setdefault("nncourse", {})["set_up"] = True  # read by inputs_from_file
            if grade_id in assignment.STAND_INS:
                cell.metadata.setdefault("nncourse", {})["stand_ins"] = assignment.STAND_INS[grade_id]
        return nb, resources


INPUTS_FOLDER = ".probe-inputs"  # in the data folder


def inputs_from_file(nb, data_dir, kernel_data_dir, log=None):
    """Before the kernel starts: the set-up cell (marked by InsertProbes) reads its inputs from a file
    that the grader writes once per machine in the data folder, `data_dir`, which the kernel sees as
    `kernel_data_dir`, instead of carrying them as text (the kernel hashes each cell's source, 0.1 s
    for these). The file is named after its content and is read-only to kernels. Returns {cell index:
    its source as it was}, to be put back after execution. A folder that cannot be written leaves the
    cell as it is (a warning, through `log`, says so)."""
    inline = {}
    for index, cell in enumerate(nb.cells):
        if not cell.metadata.get("nncourse", {}).get("set_up") or not data_dir:
            continue
        calls = [node for node in ast.walk(ast.parse(cell.source)) if isinstance(node, ast.Call)
                 and getattr(node.func, "id", "") == "_make_reporter" and len(node.args) == 4]
        encoded = calls[0].args[2].value if calls and isinstance(calls[0].args[2], ast.Constant) else None
        if not isinstance(encoded, str) or encoded.startswith("/"):
            continue
        name = f"{hashlib.sha256(encoded.encode()).hexdigest()[:24]}.npz"
        try:
            write_once(Path(data_dir) / INPUTS_FOLDER, name, lambda path: path.write_bytes(base64.b64decode(encoded)))
        except OSError as err:
            if log:
                log(f"the probes' inputs stay in the set-up cell: {Path(data_dir) / INPUTS_FOLDER} cannot be "
                    f"written ({err})")
            continue
        inline[index] = cell.source
        cell.source = cell.source.replace(repr(encoded), repr(f"{kernel_data_dir}/{INPUTS_FOLDER}/{name}"), 1)
    return inline


def write_once(folder, name, write, stale_seconds=3600):
    """folder/name, written by write(path) unless it is there, readable by every uid (kernels run under
    their own); files of other names not touched for `stale_seconds` go (other versions, abandoned ones)."""
    target = folder / name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    partial = folder / f".partial-{os.getpid()}-{threading.get_ident()}-{name}"
    try:
        write(partial)
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    for old in folder.iterdir():
        with contextlib.suppress(OSError):
            if old != target and time.time() - old.stat().st_mtime > stale_seconds:
                old.unlink()
    return target


# ------------------------------------------------------------------------------ grader side
@dataclass
class Report:
    fields: dict = None
    problem: str = ""  # why there is no usable report


def decode_report(data, max_bytes):
    """The arrays of one report output, read without pickles; ValueError says what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("npz"), str):
        raise ValueError("it is not a report")
    if len(data["npz"]) > max_bytes * 4 // 3 + 4:
        raise ValueError(f"it is larger than {max_bytes // MIB} MiB")
    try:
        return decode_arrays(data["npz"])
    except (binascii.Error, ValueError, OSError, EOFError) as err:
        raise ValueError(f"it cannot be read as plain arrays ({type(err).__name__})") from None


def cell_reports(cell, test, max_bytes):
    """The report of test `test` in `cell`'s outputs."""
    found = [o["data"][REPORT_MIME] for o in cell.get("outputs", [])
             if o.get("output_type") in ("display_data", "execute_result") and REPORT_MIME in o.get("data", {})]
    mine = [d for d in found if isinstance(d, dict) and d.get("test") == test]
    if not mine:
        return Report(problem="no result was reported: the test did not run to the end. "
                              "Run the notebook from the top and fix the first error it shows.")
    if len(mine) > 1:
        return Report(problem="the test reported more than one result, so none is trusted.")
    try:
        return Report(fields=decode_report(mine[0], max_bytes))
    except ValueError as err:
        return Report(problem=f"the test's result is unusable: {err}.")


def judge(check, report, context):
    """The verdict of one check on one report."""
    if report.fields is None:
        return Verdict(0.0, report.problem)
    problem = check.schema_problem(report.fields)
    if problem:
        return Verdict(0.0, f"the test's result is malformed ({problem}).")
    if "error" in report.fields:
        return Verdict(0.0, str(report.fields["error"]))
    try:
        score = check.judge(report.fields, context)
    except Failed as err:
        return Verdict(0.0, str(err))
    except KeyError as err:
        return Verdict(0.0, f"the test's result is malformed (field {err} is missing).")
    return Verdict(1.0 if score is None else max(0.0, min(1.0, float(score))))


def verdict_outputs(verdict, points):
    if verdict.score >= 1.0:
        return []
    if verdict.score <= 0.0:
        return [new_output("error", ename="TestFailed", evalue=verdict.message,
                           traceback=[f"Test failed: {verdict.message}"])]
    partial = round(verdict.score * points, 2)
    return [new_output("stream", name="stdout", text=f"Partial credit: {verdict.message}\n"),
            new_output("execute_result", data={"text/plain": str(partial)}, execution_count=None)]


class DecideVerdicts(AssignmentStep):
    """Autograde step between execution and SaveAutoGrades: every test cell's outcome, decided here.

    Each test is decided from the notebook up to its own cell: the reports of the tests before it
    and its own, and the cells before it as they ran. So a verdict can be decided as soon as its
    cell has run, while the kernel goes on (batch workers do: EarlyVerdicts), and is the same as
    when decided after the whole notebook."""
    max_report_mib = Integer(16, help="Largest report one test cell may send, MiB; a larger one fails "
                                      "that test").tag(config=True)

    def warm_up(self, resources):
        """Import the assignment's checks and let them load what they will need (its optional
        `warm_up(step)`): the batch worker runs this while the kernel runs the notebook."""
        assignment, _ = self.assignment(resources)
        if assignment is not None and hasattr(assignment, "warm_up"):
            assignment.warm_up(self)

    def test_of(self, cell, assignment):
        """The grade_id of the test that `cell` holds, if the assignment checks it; else None."""
        test = cell.metadata.get("nbgrader", {}).get("grade_id") if cell.cell_type == "code" else None
        return test if test in assignment.CHECKS and cell.metadata.nbgrader.get("grade") else None

    def verdict(self, nb, index, resources, reports):
        """The verdict of the test in cell `index`, from the notebook up to that cell. `reports`
        ({test: Report}) keeps the reports read so far, to be passed again for later cells."""
        assignment, _ = self.assignment(resources)
        prefix = nb.cells[:index + 1]
        for cell in prefix:
            test = self.test_of(cell, assignment)
            if test and test not in reports:
                reports[test] = cell_reports(cell, test, self.max_report_mib * MIB)
        test = self.test_of(nb.cells[index], assignment)
        seen = {self.test_of(c, assignment) for c in prefix}
        upto = type(nb)(nb, cells=prefix)
        context = assignment.context({t: r for t, r in reports.items() if t in seen}, upto, self)
        return judge(assignment.CHECKS[test], reports[test], context)

    def preprocess(self, nb, resources, decided=None):
        """`decided`: {cell index: Verdict} decided already (by EarlyVerdicts)."""
        assignment, _ = self.assignment(resources)
        if assignment is None:
            return nb, resources
        decided, reports = dict(decided or {}), {}
        verdicts = {index: decided.get(index) or self.verdict(nb, index, resources, reports)
                    for index, cell in enumerate(nb.cells) if self.test_of(cell, assignment)}
        for index, verdict in verdicts.items():  # only now: a verdict reads the reports of the tests before it
            nb.cells[index].outputs = verdict_outputs(verdict, float(nb.cells[index].metadata.nbgrader["points"]))
        for cell in nb.cells:
            cell.metadata.get("nncourse", {}).pop("stand_ins", None)
        return nb, resources


class NotIdle(Exception):
    """A verdict left for after the kernel: this machine cannot run the verdicts' thread idle."""


class EarlyVerdicts:
    """The verdict steps' work done while the kernel runs, in one background thread: first their
    warm-up, then each test's verdict as soon as its cell has run (DecideVerdicts.verdict), so that
    the expensive checks (test-set accuracies, retraining) overlap the rest of the notebook. A
    verdict that fails here for a reason of the grader's own is decided again afterwards.

    `idle`: for a kernel that uses every core. The thread then takes only CPU time the kernel
    leaves (kernel_env.become_idle) and numpy's BLAS one thread; the verdicts it has not started
    when the kernel ends, and those of checks that would start another kernel
    (not_beside_the_kernel), are decided afterwards, at full speed. Once the last code cell has
    run, the kernel has nothing left to compute: the thread is then given every core again, and
    decides that cell's verdicts while the kernel stops."""

    def __init__(self, steps, resources, idle=False):
        from concurrent.futures import ThreadPoolExecutor
        self.steps, self.resources = [s for s in steps if isinstance(s, DecideVerdicts)], resources
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="verdicts")
        self.futures, self.reports = {}, {id(s): {} for s in self.steps}
        self.seconds = 0.0  # the background thread's working time
        self.blas = contextlib.ExitStack()  # numpy's BLAS threads while idle; given back in decided()
        self.cell_sent = None  # when the cell the kernel runs now was sent to it (cell_starts)
        self.no_more_cells = threading.Event()
        self.idle = self.pool.submit(self.become_idle) if idle else None
        for step in self.steps:
            self.pool.submit(self.timed, step.warm_up, resources)

    def become_idle(self):
        """This thread's native id once it is idle, else None (then every verdict waits for the kernel).
        It waits until the kernel is busy with a long cell: an idle thread that holds the interpreter's
        lock while descheduled would hold up the grader sending short cells."""
        try:
            while not self.no_more_cells.is_set() and not self.in_long_cell():
                self.no_more_cells.wait(0.05)
            self.blas.enter_context(kernel_env.blas_threads(1))
            return threading.get_native_id() if kernel_env.become_idle() else None
        except Exception:
            return None

    def in_long_cell(self, seconds=0.25):
        sent = self.cell_sent
        return sent is not None and time.monotonic() - sent >= seconds

    def cell_starts(self, index):
        """Called by the executing step just before it sends cell `index` to the kernel."""
        self.cell_sent = time.monotonic()

    def become_normal(self):
        """After the last cell: this thread's priority and BLAS threads as the grader's own."""
        kernel_env.become_normal()
        self.blas.close()

    def timed(self, fn, *args):
        started = time.time()
        try:
            return fn(*args)
        finally:
            self.seconds += time.time() - started

    def cell_done(self, nb, index):
        """Called by the executing step after cell `index` has run, with all its outputs."""
        self.cell_sent = None
        if self.idle is not None and not any(c.cell_type == "code" and c.source.strip() for c in nb.cells[index + 1:]):
            self.no_more_cells.set()
            self.pool.submit(self.become_normal)  # the last cell: the kernel only stops now
        for step in self.steps:
            assignment, _ = step.assignment(self.resources)
            if assignment is not None and step.test_of(nb.cells[index], assignment):
                self.futures[id(step), index] = self.pool.submit(self.timed, self.verdict, step, nb, index)

    def verdict(self, step, nb, index):
        if self.idle is not None and self.idle.result() is None:  # no idle scheduling here: decided afterwards
            raise NotIdle()
        return step.verdict(nb, index, self.resources, self.reports[id(step)])

    def decided(self, step):
        """{cell index: Verdict} of `step` decided here; in idle mode, those not started are left."""
        was_idle = self.idle is not None
        self.no_more_cells.set()
        if was_idle:
            for future in self.futures.values():
                future.cancel()  # only those not started
            if self.idle.result() is not None:
                kernel_env.become_normal(self.idle.result())
        self.pool.shutdown(wait=True)
        self.blas.close()
        self.idle = None
        return {index: future.result() for (owner, index), future in self.futures.items()
                if owner == id(step) and not future.cancelled() and future.exception() is None}


def install_reporter(module_name, notebook_globals):
    """Define `_report` in a notebook run by the instructor (the source notebook's set-up cell);
    grading replaces that cell by the same code, inlined (InsertProbes)."""
    exec(compile(kernel_cell(load_assignment(module_name)), "grading set-up", "exec"), notebook_globals)
    return notebook_globals["_report"]
