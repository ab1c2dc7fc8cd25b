"""The grading sandbox, on small notebooks: what student code can and cannot do inside it."""
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import nbformat
import pytest

from nncourse import sandbox

from conftest import DATA_DIR, REPO

TIMEOUT = 5


def run_cells(*sources, timeout=TIMEOUT, **config):
    """Execute code cells with the grader's sandboxed Execute step; return the notebook."""
    from traitlets.config import Config
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    os.environ["MNIST_DIR"] = str(DATA_DIR)
    execute = sandbox.SandboxedExecute(config=Config(config), timeout=timeout)
    execute.preprocess(nb, {"metadata": {"path": str(REPO)}})
    return nb


def assert_only_system_folders(line):
    """`line` is "<uid> <listing of />": only the system folders, /data (MNIST), and the top folders
    of the Python installation and the virtualenv."""
    python_tops = {root.parts[1] for root in sandbox.python_roots()}
    allowed = {"bin", "lib", "lib64", "sbin", "usr", "etc", "proc", "dev", "tmp", "data"} | python_tops
    assert set(ast.literal_eval(line.split(" ", 1)[1])) <= allowed, line


def text(cell):
    return "".join(o.get("text", "") or f"{o.get('ename')}: {o.get('evalue')}" for o in cell.outputs)


def test_student_code_sees_only_scratch_and_no_network(listener, tmp_path):
    port, accepted = listener
    outside = tmp_path / f"pwned-{uuid.uuid4().hex}"
    gradebook = REPO / "gradebook" / "gradebook.db"
    nb = run_cells(
        "import os; print(os.getuid(), sorted(os.listdir('/')))",
        f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
        f"open({str(gradebook)!r}, 'rb')",
        f"print(sorted(os.listdir({str(REPO)!r})) if os.path.isdir({str(REPO)!r}) else 'absent')",
        f"open({str(outside)!r}, 'w').write('x')",
        "open('/usr/pwned', 'w')",
        "open('notes.txt', 'w').write('scratch is writable'); print(open('notes.txt').read())",
        "print(sorted(os.listdir('/data/mnist/MNIST/raw')))",
    )
    uid_line = text(nb.cells[0])
    if os.geteuid() == 0:
        assert not uid_line.startswith("0 "), "the kernel still runs as root"
    assert_only_system_folders(uid_line)
    assert "ConnectionRefusedError" in text(nb.cells[1]) or "OSError" in text(nb.cells[1])
    assert accepted == []
    assert "FileNotFoundError" in text(nb.cells[2])
    # the course folder is absent, or holds only the virtualenv when that lives inside it (./setup)
    assert text(nb.cells[3]).strip() in ("absent", "['.venv']")
    assert "Error" in text(nb.cells[4]) and not outside.exists()
    assert "Read-only file system" in text(nb.cells[5])
    assert "scratch is writable" in text(nb.cells[6])
    assert "train-images-idx3-ubyte" in text(nb.cells[7])


def test_limits_on_memory_and_output():
    nb = run_cells("import numpy as np\nx = np.ones(20 * 1024**3 // 8)",
                   "print('y' * (3 * 1024**2))",
                   "print('still running')",
                   **{"SandboxedExecute": {"max_output_mib": 1}})
    assert "MemoryError" in text(nb.cells[0])
    assert "output stopped: the notebook printed more than 1 MiB" in text(nb.cells[1])
    assert len(text(nb.cells[1])) < 2 * 1024**2


def test_endless_loop_is_interrupted_and_the_rest_runs():
    nb = run_cells("while True: pass", "print('after')")
    assert nb.cells[0].outputs[-1].ename == "CellTimeoutError"
    assert text(nb.cells[1]).strip() == "after"


def test_code_ignoring_interrupts_has_its_kernel_stopped():
    nb = run_cells("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
                   "print('never')", **{"SandboxedExecute": {"interrupt_grace": 2}})
    assert "still running 2 s after being interrupted" in nb.metadata["nncourse"]["stopped"]
    assert nb.cells[1].outputs[0].ename == "NotRun"


def test_a_crash_stops_only_that_notebook():
    nb = run_cells("import os; os._exit(0)", "print('never')")
    assert "stopped" in nb.metadata["nncourse"]
    assert nb.cells[1].outputs[0].ename == "NotRun"


def test_fork_bomb_hits_the_process_limit():
    nb = run_cells("import os\ntry:\n    while True:\n        os.fork()\nexcept OSError as err:\n    print('fork refused:', err.errno)",
                   "print('kernel alive')", timeout=60, **{"SandboxedKernelManager": {"max_processes": 64}})
    assert "fork refused" in text(nb.cells[0]) or "BlockingIOError" in text(nb.cells[0])
    assert "kernel alive" in text(nb.cells[1])


def test_missing_bubblewrap_stops_with_a_message_that_names_the_fix(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda tool: None if tool == "bwrap" else "/usr/bin/" + tool)
    monkeypatch.delenv("NNCOURSE_SANDBOX", raising=False)
    with pytest.raises(sandbox.SandboxError) as err:
        sandbox.check_sandbox()
    assert "`bwrap` (Debian package bubblewrap)" in str(err.value) and "NNCOURSE_SANDBOX=off" in str(err.value)
    monkeypatch.setenv("NNCOURSE_SANDBOX", "off")
    sandbox.check_sandbox()  # knowingly off: no error


ORDINARY_USER_SCRIPT = """
import json, os, sys
import nbformat
from nncourse import sandbox
cells = [nbformat.v4.new_code_cell(s) for s in json.loads(sys.argv[1])]
nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
sandbox.SandboxedExecute(timeout=30).preprocess(nb, {"metadata": {"path": os.environ["HOME"]}})
print(json.dumps([[o.get("text") or o.get("ename") for o in c.outputs] for c in nb.cells]))
"""


def as_ordinary_user(command, uid=65534):
    """`command` run as `uid`. Where the Python installation sits in a folder that user cannot
    enter (root's pyenv under /root here), a private mount namespace shows it to them, as a
    system-wide installation would be on a server."""
    hidden = [root for root in sandbox.python_roots()
              if subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "test", "-r",
                                 str(root)]).returncode != 0]
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    if not hidden:
        return drop
    script = []
    for i, root in enumerate(hidden):
        top = "/" + root.parts[1]
        script += [f"mkdir -p /tmp/.python-root-{i}", f"mount --bind {root} /tmp/.python-root-{i}",
                   f"mount -t tmpfs -o mode=755 tmpfs {top}", f"mkdir -p {root}",
                   f"mount --bind /tmp/.python-root-{i} {root}"]
    return ["unshare", "--mount", "sh", "-c", " && ".join(script) + ' && exec "$@"', "sh", *drop]


@pytest.mark.skipif(os.geteuid() != 0, reason="as an ordinary user, every other test here already runs this path")
def test_ordinary_user_gets_the_same_sandbox(listener, tmp_path):
    """Grading as an ordinary user (uid 65534) uses unprivileged user namespaces."""
    port, accepted = listener
    home = Path(tempfile.mkdtemp(prefix="ordinary-user-"))  # pytest's folders are root's only
    os.chown(home, 65534, 65534)
    cells = ["import os; print(os.getuid(), sorted(os.listdir('/')))",
             f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
             f"open({str(home / 'outside.txt')!r}, 'w')",
             "print(sorted(os.listdir('/data/mnist/MNIST/raw'))[0])"]
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "MNIST_DIR": str(DATA_DIR)}
    try:
        run = subprocess.run(as_ordinary_user([sys.executable, "-c", ORDINARY_USER_SCRIPT, json.dumps(cells)]),
                             env=env, cwd=str(home), capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs = json.loads(run.stdout.strip().splitlines()[-1])
        assert outputs[0][0].startswith("65534 ")
        assert_only_system_folders(outputs[0][0])
        assert outputs[1] in (["ConnectionRefusedError"], ["OSError"]) and accepted == []
        assert outputs[2] and "Error" in outputs[2][-1] and not (home / "outside.txt").exists()
        assert outputs[3] == ["t10k-images-idx3-ubyte\n"]
    finally:
        shutil.rmtree(home, ignore_errors=True)
