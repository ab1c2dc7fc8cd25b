"""The tamper check (nncourse/guard.py), on its own: it refuses code that could change how a
notebook is graded, and never the code students are asked to write."""
import pytest

from nncourse import guard, notebook
from nncourse.samples import STUDENTS

from conftest import RELEASE, SOURCE


@pytest.fixture(scope="module")
def instructor():
    nb = notebook.read(SOURCE)
    return guard.InstructorCode([c.source for c in nb.cells if c.cell_type == "code" and notebook.meta(c).get("locked")])


def student_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and not notebook.meta(c).get("locked")]


def test_the_solution_and_every_sample_student_pass(instructor):
    release = notebook.read(RELEASE)
    notebooks = {"source": notebook.read(SOURCE), "blank": release}
    notebooks.update({s.name: notebook.fill_blanks(release, s.answers()) for s in STUDENTS})
    for name, nb in notebooks.items():
        for cell in student_cells(nb):
            assert guard.tamper_findings(cell.source, instructor) == [], (name, cell.source[:80])


ALLOWED = [
    "import numpy as np\nimport torch\nfrom torch.nn import functional as F",
    "x = torch.tensor([1.0], dtype=torch.float)\ny = np.zeros(3, dtype=np.float32)",
    "ok = type(x) is np.ndarray and isinstance(x, torch.Tensor)",
    "class Net(object):\n    def __init__(self):\n        self.__activations = []\n        self.params = [1]",
    "def update(params, grads, lr):\n    for i in range(len(params)):\n        params[i].data -= lr * grads[i].data\n"
    "        grads[i].zero_()",
    "for _ in range(3):\n    print(np.mean([1, 2]))",
    "with torch.no_grad():\n    z = torch.zeros(2)",
]


@pytest.mark.parametrize("source", ALLOWED)
def test_ordinary_code_is_allowed(instructor, source):
    assert guard.tamper_findings(source, instructor) == []


REFUSED = {
    "np.testing.assert_allclose = lambda *a, **k: None": "changes `np.testing.assert_allclose`",
    "torch.allclose = lambda *a, **k: True": "changes `torch.allclose`",
    "import torch\ntorch.Tensor.allclose = lambda *a, **k: True": "changes `torch.Tensor.allclose`",
    "get_ipython().showtraceback = lambda *a, **k: None": "uses `get_ipython`",
    "import sys\nsys.stderr = None": "imports `sys`",
    "print = lambda *a, **k: None": "redefines the built-in `print`",
    "AssertionError = Exception": "redefines the built-in `AssertionError`",
    "_grader.check = lambda *a: None": "uses `_grader`",
    "globals()['_grader'] = None": "uses `globals`",
    "def gradient_descent(*a, **k):\n    return [0], [0], [88.15]": "redefines `gradient_descent`",
    "test_lbls_onehot = train_lbls_onehot": "redefines `test_lbls_onehot`",
    "t = np.testing\nt.assert_allclose = print": "uses `np.testing` as a value",
    "class Fake(torch.Tensor):\n    pass": "builds a class on `torch.Tensor`",
    "class Fake(np.ndarray):\n    def all(self, *a, **k):\n        return True": "builds a class on `np.ndarray`",
    "class Fake:\n    def __eq__(self, other):\n        return True": "defines `__eq__`",
    "def patch(self, f):\n    self.allclose = f\npatch(torch, None)": "uses `torch` as a value",
    "type(torch.zeros(1)).allclose = None": "uses `type(...)` other than in a comparison",
    "x = torch.sys.modules['__main__']": "uses `.modules`",
    "(lambda: 1).__code__ = None": "uses `.__code__`",
    "f = np.random.RandomState(0)._bit_generator": "uses the private attribute `._bit_generator`",
    "%load_ext autoreload": "uses `get_ipython`",
    "!rm -rf ~": "uses `get_ipython`",
    "exec('print(1)')": "uses `exec`",
    "import os\nos._exit(0)": "imports `os`",
    "import ctypes": "imports `ctypes`",
    "torch.load('weights.pt')": "uses `.load`",
    "del np.random": "changes `np.random`",
    "params = [1]\nparams[0].secret = 1": "sets `params[0].secret`",
    "print(In[13])": "uses `In`",
    "class G:\n    pass\nmatch G():\n    case _grader:\n        pass": "uses a `match` statement",
    "match (lambda x: 0.0):\n    case abs:\n        pass": "uses a `match` statement",
    "import typing\ndef f(x: 'code'):\n    pass\ntyping.get_type_hints(f)": "uses a type annotation",
    "def f() -> 'code':\n    pass": "uses a type annotation",
    "x: 'code' = 1": "uses a type annotation",
    "from torch import inspect as ins": "imports `inspect`",
    "from torch._utils import _import_dotted_name": "imports `_utils`",
    "import torch.library": "imports `library`",
    "lib = torch.library.Library('aten', 'IMPL')": "uses `.library`",
    "torch.from_numpy(test_lbls_onehot)[:] = 0": "uses `.from_numpy`",
    "test_lbls_onehot.setflags(write=True)": "uses `.setflags`",
    "_build_grader??": "uses `get_ipython`",
    "get_random_batch?": "uses `get_ipython`",
    "class Fake(metaclass=type):\n    pass": "gives class `Fake` a metaclass",
    "print(_i13)": "uses `_i13`",
    "import torch\nprint(torch.inspect.getsource(get_random_batch))": "uses `.inspect`",
    "import torch\ntorch.os.abort()": "uses `.os`",
    "import torch\nprint(torch.jit.script(get_random_batch).code)": "uses `.jit`",
}


@pytest.mark.parametrize("source", REFUSED)
def test_code_that_could_change_grading_is_refused(instructor, source):
    messages = [message for _, message in guard.tamper_findings(source, instructor)]
    assert any(REFUSED[source] in m for m in messages), messages


def test_imports_from_other_cells_count(instructor):
    """A module imported under a new name in one cell is still a module in the next."""
    aliases = guard.import_aliases(guard.parse_cell("import numpy.testing as nt"))
    assert guard.tamper_findings("def f(m):\n    pass\nf(nt)", instructor) == []
    assert guard.tamper_findings("def f(m):\n    pass\nf(nt)", instructor, aliases) != []


def test_a_syntax_error_is_left_to_fail_when_run(instructor):
    assert guard.tamper_findings("def broken(:\n    import os", instructor) == []
