"""Keeping scores honest: the grading kernel runs the instructor's notebook, with students' code
only where students write code, and none that could change what the tests rely on.

- RestoreCells: nbgrader's OverwriteCells (locked and test cells get their gradebook source back),
  after putting every gradebook cell back in its place: deleted ones are re-inserted and moved
  ones moved back, in the source notebook's order. Cells a student added travel with the
  gradebook cell they followed.
- RefuseTampering: reads every code cell that is not the instructor's (solution cells and cells
  students added) without running it (`tamper_findings`), and marks the cells that could change
  the grader, the notebook's own functions and data, builtins, IPython or the libraries
  (numpy, torch...) as refused, in cell metadata `nncourse.refused`. SandboxedExecute does not
  run refused cells: they get an error output saying why, so whatever depends on them scores 0.

Both run in nbgrader's sanitize step, outside the kernel and before it starts, so nothing the
student's code does at run time can change them. README ("Threat model") says what they cannot
catch.
"""
import ast
import builtins
import importlib
import re
from types import SimpleNamespace

import nbformat
from IPython.core.inputtransformer2 import TransformerManager
from nbgrader.api import Gradebook
from nbgrader.preprocessors import NbGraderPreprocessor, OverwriteCells

ALLOWED_IMPORTS = {"numpy", "torch", "torchvision", "matplotlib", "math", "random", "time", "collections",
                   "itertools", "copy", "statistics"}
# Names that reach the interpreter's internals, run code from strings or files, or stop the kernel.
FORBIDDEN_NAMES = {"getattr", "setattr", "delattr", "vars", "globals", "locals", "eval", "exec", "compile",
                   "open", "breakpoint", "input", "memoryview", "get_ipython", "exit", "quit", "help"}
# IPython keeps every executed cell's source (the grader's too) in these.
IPYTHON_HISTORY = re.compile(r"^(In|Out|_i+|_i\d+|_ih|_oh|_dh|_\d+)$")
# ... and attributes that lead to frames, the module table, source code, pickles, C memory or
# processes, including the standard modules numpy and torch re-export (torch.os, torch.sys...).
FORBIDDEN_ATTRIBUTES = FORBIDDEN_NAMES | {
    "f_globals", "f_locals", "f_back", "f_builtins", "f_code", "gi_frame", "cr_frame", "ag_frame", "tb_frame",
    "tb_next", "modules", "settrace", "setprofile", "currentframe", "stack", "getouterframes", "import_module",
    "getsource", "getsourcelines", "findsource", "getlines", "jit", "fx", "load", "loads", "ctypeslib",
    "system", "popen", "spawn", "fork", "kill",
    "os", "sys", "builtins", "inspect", "linecache", "gc", "importlib", "subprocess", "ctypes", "pickle",
    "marshal", "types", "traceback", "signal", "socket", "threading", "multiprocessing", "shutil", "io",
    # ... torch's operator registry and code loaders, numpy's compilers, and memory shared with
    # the notebook's read-only data
    "library", "ops", "overrides", "hub", "package", "compiler", "serialization", "f2py", "distutils",
    "getattr_static", "getmembers", "getmodule", "setflags", "base", "from_numpy", "as_tensor", "asarray",
    "frombuffer"}
TENSOR_FIELDS = {"data", "grad", "requires_grad"}  # attributes students set: params[i].data = ...
UNKNOWN = object()  # a library expression whose object cannot be told without running the code
HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python, whose attributes can be replaced


def python_of(source):
    """The cell's Python after IPython's transforms (magics become get_ipython() calls)."""
    return TransformerManager().transform_cell(source)


def parse_cell(source):
    """The cell's syntax tree, or None if it does not parse."""
    try:
        return ast.parse(python_of(source))
    except (SyntaxError, ValueError):
        return None


def global_bindings(tree):
    """Names a cell binds in the notebook's global namespace."""
    names = set()

    def visit(node, in_function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not in_function:
            names.add(node.name)
        if isinstance(node, ast.Global):
            names.update(node.names)
        elif not in_function:
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update(a.asname or a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                names.add(node.name)
        nested = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, nested)
    visit(tree, False)
    return names


def import_aliases(tree):
    """{name: (module, attribute or None)} for every import in the cell, at any depth."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = (a.name if a.asname else a.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = (node.module, a.name)
    return aliases


class InstructorCode:
    """What the instructor's (locked) cells define: the names students may not replace, and the
    imports, {name: (module, attribute)}."""

    def __init__(self, sources):
        self.names, self.aliases = set(), {}
        for source in sources:
            tree = parse_cell(source)
            if tree is not None:
                self.names |= global_bindings(tree)
                self.aliases.update(import_aliases(tree))


def library_object(chain, aliases):
    """The object an expression such as `np.testing` names, looked up in the grader's own Python."""
    attributes = []
    while isinstance(chain, ast.Attribute):
        attributes.append(chain.attr)
        chain = chain.value
    if not isinstance(chain, ast.Name):
        return UNKNOWN
    module, attribute = aliases[chain.id]
    try:
        value = importlib.import_module(module)
        for attr in ([attribute] if attribute else []) + attributes[::-1]:
            value = getattr(value, attr)
    except Exception:
        return UNKNOWN
    return value


def can_be_patched(value):
    """Modules and classes defined in Python can have their attributes replaced; C types
    (np.ndarray, np.float32) and plain values (torch.float, np.pi) cannot."""
    return value is UNKNOWN or type(value).__name__ == "module" or (
        isinstance(value, type) and bool(value.__flags__ & HEAP_TYPE))


def tamper_findings(source, instructor, student_imports=None):
    """What in a student's cell could change what the tests rely on, as sorted [(line, message)].

    `student_imports`: the imports of all the student's cells (names imported in one cell are
    library names in the others too). A cell that does not parse is not refused: it fails with
    its SyntaxError when it runs."""
    tree = parse_cell(source)
    if tree is None:
        return []
    own_imports = import_aliases(tree)
    aliases = {**instructor.aliases, **(student_imports or {}), **own_imports}
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    help_requests = help_syntax(tree)
    findings = set()

    def refuse(node, message):
        findings.add((getattr(node, "lineno", 1), message))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
            for module in modules:
                if module.split(".")[0] not in ALLOWED_IMPORTS or getattr(node, "level", 0):
                    refuse(node, f"imports `{module}`; graded code may import only "
                                 f"{', '.join(sorted(ALLOWED_IMPORTS))}")
            parts = [p for m in modules for p in m.split(".")[1:]]
            parts += [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            for part in parts:  # `from torch import inspect` is `torch.inspect`
                if part == "*":
                    refuse(node, "uses `import *`")
                elif part in FORBIDDEN_ATTRIBUTES or part.startswith("_"):
                    refuse(node, f"imports `{part}`, which graded code may not use")
        elif isinstance(node, ast.Match):
            refuse(node, "uses a `match` statement")
        elif isinstance(node, (ast.arg, ast.AnnAssign)) and node.annotation is not None:
            refuse(node, "uses a type annotation (they can run code from strings)")
        elif isinstance(node, ast.Name):
            dunder = node.id.startswith("__") and node.id.endswith("__")
            if (node.id in FORBIDDEN_NAMES or dunder or IPYTHON_HISTORY.match(node.id)) and node not in help_requests:
                refuse(node, f"uses `{node.id}`, which graded code may not use")
            elif node.id.startswith("_") and node.id in instructor.names:
                refuse(node, f"uses `{node.id}`, which belongs to the grader")
            if node.id in aliases and not isinstance(node.ctx, ast.Store):
                check_library_use(node, parents, aliases, refuse)
        elif isinstance(node, ast.Attribute):
            own = isinstance(node.value, ast.Name) and node.value.id == "self"
            if node.attr in FORBIDDEN_ATTRIBUTES and node.value not in help_requests:
                refuse(node, f"uses `.{node.attr}`, which graded code may not use")
            elif node.attr.startswith("__") and node.attr.endswith("__"):
                refuse(node, f"uses `.{node.attr}`, which reaches into Python's internals")
            elif node.attr.startswith("_") and not own:
                refuse(node, f"uses the private attribute `.{node.attr}`")
            if isinstance(node.ctx, (ast.Store, ast.Del)) and not own and node.attr not in TENSOR_FIELDS:
                refuse(node, f"sets `{ast.unparse(node)}`: code may set attributes only on `self`, "
                             f"or a tensor's .data, .grad and .requires_grad")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if getattr(node, "returns", None) is not None:
                refuse(node, "uses a type annotation (they can run code from strings)")
            if node.name.startswith("__") and node.name.endswith("__") and node.name != "__init__":
                refuse(node, f"defines `{node.name}`, which changes how Python treats objects")
            if isinstance(node, ast.ClassDef) and node.keywords:
                refuse(node, f"gives class `{node.name}` a metaclass or class arguments")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type":
            if not isinstance(parents.get(node), ast.Compare):
                refuse(node, "uses `type(...)` other than in a comparison such as `type(x) is np.ndarray`")

    for name in sorted(global_bindings(tree)):
        if name in instructor.names and own_imports.get(name, "new") != instructor.aliases.get(name):
            refuse(tree, f"redefines `{name}`, which the notebook's own cells define and the tests use")
        elif name in vars(builtins):
            refuse(tree, f"redefines the built-in `{name}`")
    return sorted(findings)


def help_syntax(tree):
    """The `get_ipython` names of IPython's help syntax on the release's `????` blanks, which only
    shows documentation (`_build_grader??` would show the grader's code: not allowed)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "run_line_magic" and isinstance(node.func.value, ast.Call) \
                and isinstance(node.func.value.func, ast.Name) and node.func.value.func.id == "get_ipython" \
                and node.args and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value in ("pinfo", "pinfo2", "psearch") and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant) and is_blank(str(node.args[1].value)):
            found |= {node.func.value, node.func.value.func}
    return found


def is_blank(text):
    """A release line with `???` blanks, whose names are all ordinary ones."""
    names = re.findall(r"[A-Za-z_]\w*", text)
    return "?" in text and not any(n.startswith("_") or n in FORBIDDEN_ATTRIBUTES for n in names)


def check_library_use(name, parents, aliases, refuse):
    """A library name may be used to call functions, read values and compare types. Changing
    what it holds, or handing a module or class to other code (which could change it), is refused."""
    top = name
    while isinstance(parents.get(top), (ast.Attribute, ast.Subscript)) and parents[top].value is top:
        top = parents[top]
    parent = parents.get(top)
    if isinstance(getattr(top, "ctx", None), (ast.Store, ast.Del)):
        refuse(top, f"changes `{ast.unparse(top)}`, part of a library the tests use")
    elif isinstance(parent, ast.Call) and parent.func is top or isinstance(parent, ast.Compare):
        return
    elif isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) \
            and parent.func.id in ("isinstance", "issubclass") and top in parent.args[1:]:
        return
    elif isinstance(parent, ast.ClassDef):
        refuse(top, f"builds a class on `{ast.unparse(top)}`, a library class the tests may use")
    elif isinstance(top, ast.Subscript) or can_be_patched(library_object(top, aliases)):
        refuse(top, f"uses `{ast.unparse(top)}` as a value; a library's modules and classes may only "
                    f"be called or have their attributes read")


def refusal_message(findings):
    lines = "; ".join(f"line {line}: {message}" for line, message in findings[:5])
    return (f"This cell was not run, because its code could change how it is graded ({lines}). "
            f"Rewrite it without that; ask your instructor if you think this is a mistake.")


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


class RefuseTampering(NbGraderPreprocessor):
    """Mark students' code cells that could change what the tests rely on (see module docstring)."""

    def preprocess(self, nb, resources):
        locked = {cell.name: cell.source for cell in source_notebook(resources).cells if cell.locked}
        instructor = InstructorCode(locked.values())
        students = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source != locked.get(
            cell.metadata.get("nbgrader", {}).get("grade_id"))]
        student_imports = {}
        for cell in students:
            student_imports.update(import_aliases(parse_cell(cell.source) or ast.Module(body=[])))
        for cell in nb.cells:
            cell.metadata.pop("nncourse", None)  # only this step writes it
        for cell in students:
            findings = tamper_findings(cell.source, instructor, student_imports)
            if findings:
                grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "(added by the student)")
                self.log.warning("Refusing cell %s: %s", grade_id, findings)
                cell.metadata["nncourse"] = {"refused": refusal_message(findings)}
        return nb, resources


def refused(cell):
    return cell.metadata.get("nncourse", {}).get("refused", "")
