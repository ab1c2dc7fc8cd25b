"""The grading sandbox, on small notebooks: what student code can and cannot do inside it."""
import os
import socket
import threading
import uuid

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


def text(cell):
    return "".join(o.get("text", "") or f"{o.get('ename')}: {o.get('evalue')}" for o in cell.outputs)


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


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
    assert "'work'" not in uid_line and "'root'" in uid_line  # only what the Python install needs
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
