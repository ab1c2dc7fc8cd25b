"""The grading sandbox, on small notebooks: each limit is lowered where needed and shown stopping
code that really ran into it (a marker printed before the attack, the count it reached, the errno),
with a control where the same code succeeds under a higher limit."""
import ast
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from queue import Empty
from pathlib import Path

import nbformat
import numpy as np
import pytest

from nncourse import memgroup, sandbox, template

from conftest import DATA_DIR, REPO

TIMEOUT = 5
FORKED = {"forked": False}  # set by the kernel_start fixture


@pytest.fixture(autouse=True, params=["own sandbox", "forked from a template"])
def kernel_start(request):
    """Every test runs with kernels in a sandbox of their own, and again with kernels forked from a
    warm template (SandboxedKernelManager.fork_server, as root only)."""
    if request.param != "own sandbox" and os.geteuid() != 0:
        pytest.skip("kernels are forked from a template only when grading as root")
    FORKED["forked"] = request.param != "own sandbox"
    yield request.param
    FORKED["forked"] = False


def run_cells(*sources, timeout=TIMEOUT, **config):
    """Execute code cells with the grader's sandboxed Execute step; return the notebook."""
    from traitlets.config import Config
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    os.environ["MNIST_DIR"] = str(DATA_DIR)
    config = Config(config)
    config.SandboxedKernelManager.setdefault("data_variable", "MNIST_DIR")  # as the course's configuration
    config.SandboxedKernelManager.setdefault("fork_server", FORKED["forked"])
    execute = sandbox.SandboxedExecute(config=config, timeout=timeout)
    execute.preprocess(nb, {"metadata": {"path": str(REPO)}})
    return nb


def text(cell):
    return "".join(o.get("text", "") or f"{o.get('ename')}: {o.get('evalue')}" for o in cell.outputs)


def assert_only_system_folders(line):
    """`line` is "<uid> <listing of />": only the system folders, /data (MNIST), and the top folders
    of the Python installation and the virtualenv."""
    python_tops = {root.parts[1] for root in sandbox.python_roots()}
    template_top = {Path(template.PLACE).parts[1]} if FORKED["forked"] else set()
    allowed = {"bin", "lib", "lib64", "sbin", "usr", "etc", "proc", "dev", "tmp", "data"} | python_tops | template_top
    assert set(ast.literal_eval(line.split(" ", 1)[1])) <= allowed, line


@pytest.fixture
def removed_folders(monkeypatch):
    """What each kernel's scratch folder held on the host just before the sandbox removed it:
    a list of (scratch, runtime folder, files in scratch), one per kernel."""
    seen, remove = [], sandbox.SandboxedKernelManager._remove_folders

    def spy(km):
        if km._scratch.exists():  # a stopped kernel is cleaned up twice
            seen.append((km._scratch, km._runtime, sorted(p.name for p in km._scratch.iterdir())))
        remove(km)
    monkeypatch.setattr(sandbox.SandboxedKernelManager, "_remove_folders", spy)
    return seen


# --- what the kernel can see and reach ---------------------------------------------------------

def test_files_outside_scratch_are_absent_or_read_only(tmp_path):
    """Host files are not there or read-only; each write is attempted and refused at its own line."""
    outside = tmp_path / f"pwned-{uuid.uuid4().hex}"
    gradebook = REPO / "gradebook" / "gradebook.db"
    in_venv = Path(sys.prefix) / f"pwned-{uuid.uuid4().hex}"  # a real host folder, shown read-only
    nb = run_cells(
        "import os; print(os.getuid(), sorted(os.listdir('/')))",
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])",
        f"print('reading'); open({str(gradebook)!r}, 'rb')",
        f"print(sorted(os.listdir({str(REPO)!r})) if os.path.isdir({str(REPO)!r}) else 'absent')",
        f"print('writing', os.path.isdir({str(tmp_path)!r})); open({str(outside)!r}, 'w').write('x')",
        "print('writing', os.path.isdir('/usr')); open('/usr/pwned', 'w')",
        f"print('writing', os.path.isdir({sys.prefix!r})); open({str(in_venv)!r}, 'w')",
        "open('notes.txt', 'w').write('scratch is writable'); print(open('notes.txt').read())",
        "print(sorted(os.listdir('/data/mnist/MNIST/raw')))",
    )
    uid_line = text(nb.cells[0])
    if os.geteuid() == 0:
        assert not uid_line.startswith("0 "), "the kernel still runs as root"
        assert text(nb.cells[1]).strip() == "0000000000000000", "the kernel kept capabilities"
    assert_only_system_folders(uid_line)
    assert text(nb.cells[2]).startswith("reading\nFileNotFoundError")
    # the course folder is absent, or holds only the virtualenv when that lives inside it (./setup)
    assert text(nb.cells[3]).strip() in ("absent", "['.venv']")
    assert text(nb.cells[4]).startswith("writing False\nFileNotFoundError") and not outside.exists()
    assert text(nb.cells[5]).startswith("writing True\nOSError: [Errno 30] Read-only file system")
    assert text(nb.cells[6]).startswith("writing True\nOSError: [Errno 30] Read-only file system")
    assert not in_venv.exists()
    assert text(nb.cells[7]) == "scratch is writable\n"
    assert "train-images-idx3-ubyte" in text(nb.cells[8])


def test_a_python_installation_under_tmp_is_shown_read_only(monkeypatch):
    """Folders the sandbox shows under /tmp (the virtualenv of a checkout in /tmp, as on a CI
    machine) stay there, read-only, although each kernel gets an empty /tmp of its own."""
    installed = Path(tempfile.mkdtemp(prefix="python-under-tmp-"))
    try:
        os.chmod(installed, 0o755)
        (installed / "marker.txt").write_text("installed")
        roots = sandbox.python_roots()
        monkeypatch.setattr(sandbox, "python_roots", lambda: sorted([*roots, installed]))
        nb = run_cells(f"print(open({str(installed / 'marker.txt')!r}).read())",
                       f"open({str(installed / 'new.txt')!r}, 'w')", "open('/tmp/mine', 'w'); print('tmp writable')")
        assert text(nb.cells[0]) == "installed\n"
        assert text(nb.cells[1]).startswith("OSError: [Errno 30] Read-only file system")
        assert text(nb.cells[2]) == "tmp writable\n"
    finally:
        shutil.rmtree(installed)


def test_no_network_not_even_loopback(listener):
    """The kernel's connections are attempted and fail: its own namespace has only `lo`."""
    port, accepted = listener
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # control: the listener works
    deadline = time.time() + 5
    while not accepted and time.time() < deadline:
        time.sleep(0.05)
    assert len(accepted) == 1
    nb = run_cells(
        "import socket; print(socket.if_nameindex())",
        f"print('connecting'); socket.create_connection(('127.0.0.1', {port}), timeout=2)",
        "print('connecting'); socket.create_connection(('1.1.1.1', 53), timeout=2)",
    )
    assert text(nb.cells[0]).strip() == "[(1, 'lo')]"
    assert text(nb.cells[1]).startswith("connecting\nConnectionRefusedError: [Errno 111]")
    assert text(nb.cells[2]).startswith("connecting\nOSError: [Errno 101] Network is unreachable")
    time.sleep(0.5)
    assert len(accepted) == 1, "the kernel reached the grader's listener"


def test_environment_is_clean(monkeypatch):
    """The grader's variables do not reach the kernel; only the listed ones are passed on."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "grader-secret-1234")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # control: a variable the sandbox keeps
    nb = run_cells("import json, os; print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ)}))")
    seen = json.loads(text(nb.cells[0]))
    env = seen["env"]
    assert "AWS_SECRET_ACCESS_KEY" not in env and "grader-secret-1234" not in json.dumps(env)
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["MNIST_DIR"] == "/data/mnist" != os.environ["MNIST_DIR"]
    assert env["HOME"] == seen["cwd"] and env["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_kernel_threads_are_a_setting_of_the_kernel_manager(monkeypatch):
    """The thread cap reaches the kernel from the kernel manager's setting; the grader's own environment stays."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    probe = "import os; print(os.environ.get('OMP_NUM_THREADS'), os.environ.get('OPENBLAS_NUM_THREADS'))"
    assert text(run_cells(probe, SandboxedKernelManager={"threads": 3}).cells[0]).split() == ["3", "3"]
    assert text(run_cells(probe).cells[0]).split() == ["None", "None"]  # no setting, no cap
    assert "OMP_NUM_THREADS" not in os.environ


def test_nothing_of_the_kernel_is_left_afterwards(removed_folders):
    """Scratch and runtime folders held the kernel's files, then are removed; no process survives."""
    nb = run_cells(
        "import os; open('notes.txt', 'w').write('hello'); print(os.getcwd(), os.environ['JUPYTER_RUNTIME_DIR'])",
        "import time\nif os.fork() == 0:  # a daemon in its own session\n    os.setsid()\n"
        "    if os.fork() == 0:\n        time.sleep(300)\n    os._exit(0)\nos.wait()\nprint(os.getuid())",
    )
    cwd, runtime = text(nb.cells[0]).split()
    (scratch, runtime_dir, files), = removed_folders
    assert (str(scratch), str(runtime_dir)) == (cwd, runtime) and "notes.txt" in files
    assert not Path(cwd).exists() and not Path(runtime).exists()
    if os.geteuid() == 0:  # the kernel's uid is its own: any process with it is the kernel's
        uid, deadline, left = text(nb.cells[1]).strip(), time.time() + 5, [True]
        while left and time.time() < deadline:
            left = []
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    if status.read_text().split("Uid:")[1].split()[0] == uid:
                        left.append(status.parent.name)
                except (OSError, IndexError):
                    pass
            time.sleep(0.1)
        assert not left, f"processes of the kernel's uid {uid} still running: {left}"


# --- resource limits ---------------------------------------------------------------------------

ALLOCATE_3_GIB = ("import numpy as np, resource\nprint(resource.getrlimit(resource.RLIMIT_AS))\n"
                  "x = np.empty(3 * 1024**3, dtype=np.uint8)\nprint('allocated', x.nbytes >> 30, 'GiB')")


def test_memory_limit_stops_an_allocation_that_fits_in_ram():
    """3 GiB (far less than the machine's RAM) is refused under a 2 GiB cap, allowed under 6 GiB."""
    capped = run_cells(ALLOCATE_3_GIB, "import resource; resource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
                       **{"SandboxedKernelManager": {"memory_gib": 2}})
    assert text(capped.cells[0]).startswith(f"({2 << 30}, {2 << 30})\nMemoryError: Unable to allocate 3.00 GiB")
    assert "ValueError: not allowed to raise maximum limit" in text(capped.cells[1])
    control = run_cells(ALLOCATE_3_GIB, **{"SandboxedKernelManager": {"memory_gib": 6}})
    assert text(control.cells[0]) == f"({6 << 30}, {6 << 30})\nallocated 3 GiB\n"


FORK_BOMB = """
import errno, os, resource, signal, time

def tasks_of_my_uid():  # what RLIMIT_NPROC counts: processes and threads of the real uid
    n = 0
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            status = open(f'/proc/{pid}/status').read()
        except OSError:
            continue
        if int(status.split('Uid:')[1].split()[0]) == os.getuid():
            n += int(status.split('Threads:')[1].split()[0])
    return n

print('limit', resource.getrlimit(resource.RLIMIT_NPROC)[0])
children = []
try:
    while len(children) < 300:  # bounded, should the limit ever fail
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
except OSError as err:
    print('forks', len(children), 'tasks', tasks_of_my_uid(), 'error', errno.errorcode[err.errno])
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"""


def test_fork_bomb_stops_at_the_process_limit():
    """Forking stops with EAGAIN exactly when the uid's processes and threads reach the cap."""
    nb = run_cells(FORK_BOMB, "print('kernel alive')", timeout=30, **{"SandboxedKernelManager": {"max_processes": 30}})
    words = text(nb.cells[0]).split()
    assert words[:2] == ["limit", "30"] and words[-1] == "EAGAIN", text(nb.cells[0])
    forks, tasks = int(words[3]), int(words[5])
    assert tasks == 30 and 10 <= forks < 30, text(nb.cells[0])  # the kernel's own threads take the rest
    assert text(nb.cells[1]) == "kernel alive\n"


SPREAD_OUT = """
import os, signal, time
print('oom_score_adj', open('/proc/self/oom_score_adj').read().strip())
children = []
for _ in range(6):  # 6 processes of 400 MiB each: 2.4 GiB together, each far below RLIMIT_AS
    pid = os.fork()
    if pid == 0:
        block = bytearray(b'x') * (400 << 20)  # written, so really in memory
        time.sleep(60)
        os._exit(0)
    children.append(pid)
time.sleep(8)
killed = []
for pid in children:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done and os.WIFSIGNALED(status):
        killed.append(os.WTERMSIG(status))
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
print('killed', killed)
"""


def test_memory_of_all_the_kernels_processes_together_is_capped():
    """Processes forked by the kernel share one memory cap (a memory cgroup): 6 children of 400 MiB
    under a 2 GiB cap are killed by the OOM killer, which takes the kernel's processes first (its OOM
    score); under 4 GiB all of them live. The grader, outside the cap, is never a candidate."""
    probe = memgroup.MemoryGroup.create(1 << 30)
    if probe is None:
        pytest.skip("this process may not create memory cgroups (grading as an ordinary user)")
    probe.remove()
    capped = run_cells(SPREAD_OUT, "print('kernel alive')", timeout=60, **{"SandboxedKernelManager": {"memory_gib": 2}})
    words = text(capped.cells[0]).split("\n")
    assert words[0] == "oom_score_adj 1000", words
    killed = ast.literal_eval(words[1].split(" ", 1)[1])
    assert 1 <= len(killed) <= 5 and set(killed) == {signal.SIGKILL}, words
    assert text(capped.cells[1]) == "kernel alive\n"
    control = run_cells(SPREAD_OUT, timeout=60, **{"SandboxedKernelManager": {"memory_gib": 4}})
    assert text(control.cells[0]).split("\n")[1] == "killed []", text(control.cells[0])


def test_memory_groups_of_a_killed_grader_are_removed_by_the_next_one():
    """A group left by a grader process that was killed (its pid gone), with a process still in it,
    is emptied and removed when the next group is created; a live grader's group is left alone."""
    live = memgroup.MemoryGroup.create(1 << 30)
    if live is None:
        pytest.skip("this process may not create memory cgroups (grading as an ordinary user)")
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process has this pid
    abandoned = memgroup.MemoryGroup(live.folder.with_name(f"{memgroup.PREFIX}{dead}-1"))
    abandoned.folder.mkdir()
    sleepers = [subprocess.Popen(memgroup.join_command(group, None) + ["sleep", "60"]) for group in (abandoned, live)]
    try:
        time.sleep(0.5)
        assert [abandoned.members(), live.members()] == [[sleeper.pid] for sleeper in sleepers]
        new = memgroup.MemoryGroup.create(1 << 30)
        assert not abandoned.folder.exists() and sleepers[0].wait(timeout=10) == -signal.SIGKILL
        assert live.members() == [sleepers[1].pid] and sleepers[1].poll() is None
        assert new.remove() and live.remove() and not live.folder.exists()
        assert sleepers[1].wait(timeout=10) == -signal.SIGKILL
    finally:
        for sleeper in sleepers:
            sleeper.kill()


def grader_may_fix_oom_scores():
    """Whether this process holds CAP_SYS_RESOURCE, with which a score it sets is the least that
    the process may set again (root on these machines does not hold it)."""
    effective = int(Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0], 16)
    return bool(effective >> 24 & 1)


def test_the_kernel_is_the_oom_killers_first_choice_and_never_below_the_grader():
    """Kernels start with oom_score_adj 1000. Without privilege a process may not set a score below
    the least one set for it with privilege: never below the grader's 0, and, where the grader holds
    CAP_SYS_RESOURCE, not below 1000."""
    write = ("import os\nfd = os.open('/proc/self/oom_score_adj', os.O_WRONLY)\ntry:\n    os.write(fd, b'{}')\n"
             "except OSError as err:\n    print(type(err).__name__)\nos.close(fd)\n"
             "print(open('/proc/self/oom_score_adj').read().strip())")
    nb = run_cells("print(open('/proc/self/oom_score_adj').read().strip())", write.format(-1), write.format(0))
    assert text(nb.cells[0]) == "1000\n"
    assert text(nb.cells[1]) == "PermissionError\n1000\n"
    assert text(nb.cells[2]) == ("PermissionError\n1000\n" if grader_may_fix_oom_scores() else "0\n")


OPEN_FILES = """
import errno, os, resource
print('limit', resource.getrlimit(resource.RLIMIT_NOFILE)[0])
files = []
try:
    while len(files) < 1000:  # bounded, should the limit ever fail
        files.append(open(f'f{len(files)}', 'w'))
except OSError as err:
    opened = len(files)
    files.pop().close()  # counted at the limit itself: listdir takes the one file freed
    print('opened', opened, 'open', len(os.listdir('/proc/self/fd')), 'error', errno.errorcode[err.errno])
for f in files:
    f.close()
"""


def test_open_files_stop_at_the_limit():
    """Opening files stops with EMFILE exactly when the kernel holds the capped number of files."""
    nb = run_cells(OPEN_FILES, "print('kernel alive')", **{"SandboxedKernelManager": {"max_open_files": 100}})
    words = text(nb.cells[0]).split()
    assert words[:2] == ["limit", "100"] and words[-1] == "EMFILE", text(nb.cells[0])
    assert int(words[3]) >= 10 and int(words[5]) == 100, text(nb.cells[0])  # ~60 are ZeroMQ's own
    assert text(nb.cells[1]) == "kernel alive\n"


def test_file_size_limit_stops_a_write_at_the_cap():
    """Writing 2 MiB under a 1 MiB cap fails with EFBIG at exactly 1 MiB (Python ignores SIGXFSZ)."""
    nb = run_cells(
        "import os, signal; print(signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN)",
        "f = open('big', 'wb')\ntry:\n    f.write(b'x' * 2 * 1024**2); f.flush()\n"
        "except OSError as err:\n    print('refused', err)\nprint(os.path.getsize('big'))",
        "print('kernel alive')", **{"SandboxedKernelManager": {"max_file_mib": 1}})
    assert text(nb.cells[0]) == "True\n"
    assert text(nb.cells[1]) == f"refused [Errno {errno.EFBIG}] File too large\n{1024**2}\n"
    assert text(nb.cells[2]) == "kernel alive\n"


def test_cpu_limit_kills_the_kernel_at_the_cap():
    """A busy loop is killed once it has used its CPU seconds, long before the cell's time limit."""
    busy = ("import time\nlast = 0\nwhile True:\n    if time.process_time() > last + 0.25:\n"
            "        last = time.process_time(); print(round(last, 2))")
    start = time.time()
    nb = run_cells("import resource; print(resource.getrlimit(resource.RLIMIT_CPU))", busy, "print('never')",
                   timeout=60, **{"SandboxedKernelManager": {"cpu_seconds": 2}})
    elapsed = time.time() - start
    assert text(nb.cells[0]) == "(2, 2)\n"
    cpu_seen = [float(line) for line in text(nb.cells[1]).split()]
    assert 1.5 <= cpu_seen[-1] <= 2, cpu_seen  # it ran, up to the cap, and no further
    assert nb.metadata["nncourse"]["stopped"] == "Kernel died" and nb.cells[2].outputs[0].ename == "NotRun"
    assert elapsed < 20, f"took {elapsed:.0f} s: the 60 s cell limit stopped it, not the CPU limit"


CORE_PROBE = ("import os\npid = os.fork()\nif pid == 0:\n    os.abort()\n_, status = os.waitpid(pid, 0)\n"
              "print('signal', os.WTERMSIG(status), 'core dumped', os.WCOREDUMP(status),"
              " [f for f in os.listdir() if f.startswith('core')])")


def test_no_core_dumps(tmp_path):
    """A crashing child in the kernel dumps no core (RLIMIT_CORE 0, not raisable); outside, it does."""
    nb = run_cells("import resource; print(resource.getrlimit(resource.RLIMIT_CORE))", CORE_PROBE,
                   "resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, 1 << 20))")
    assert text(nb.cells[0]) == "(0, 0)\n"
    assert text(nb.cells[1]) == "signal 6 core dumped False []\n"
    assert "ValueError: not allowed to raise maximum limit" in text(nb.cells[2])
    allow = "import resource; resource.setrlimit(resource.RLIMIT_CORE, (-1, -1))\n"
    host = subprocess.run([sys.executable, "-c", allow + CORE_PROBE], cwd=tmp_path, capture_output=True, text=True)
    if "core dumped True" not in host.stdout:
        pytest.skip(f"this machine dumps no core even when allowed ({host.stdout.strip() or host.stderr[-200:]})")


def test_output_limit_drops_what_comes_after_the_cap():
    """30 flushed prints of 100 kB under a 1 MiB cap: about 1 MiB is kept, then a notice; cells go on."""
    nb = run_cells("import sys\nfor i in range(30):\n    print('y' * 100_000); sys.stdout.flush()",
                   "x = 1", **{"SandboxedExecute": {"max_output_mib": 1}})
    kept = text(nb.cells[0])
    assert 1024**2 - 200_000 < kept.count("y") <= 1024**2, kept.count("y")
    assert kept.endswith("[output stopped: the notebook printed more than 1 MiB]\n")
    assert nb.cells[1].execution_count == 2 and nb.cells[1].outputs == []


# --- time limits and dying kernels -------------------------------------------------------------

def test_endless_loop_is_interrupted_and_the_same_kernel_runs_on():
    """At the time limit the loop is interrupted; the next cell runs in the same kernel."""
    start = time.time()
    nb = run_cells("x = 'set before the loop'\nprint('looping')\nwhile True: pass", "print(x)")
    assert TIMEOUT <= time.time() - start < TIMEOUT + 10
    assert text(nb.cells[0]).startswith("looping\n") and nb.cells[0].outputs[-1].ename == "CellTimeoutError"
    assert text(nb.cells[1]) == "set before the loop\n"


def test_code_ignoring_interrupts_has_its_kernel_stopped(removed_folders):
    """A loop that ignores SIGINT is still running after the grace period, so its kernel is stopped."""
    start = time.time()
    nb = run_cells("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('looping')\nwhile True: pass",
                   "print('never')", **{"SandboxedExecute": {"interrupt_grace": 2}})
    assert TIMEOUT + 2 <= time.time() - start < TIMEOUT + 2 + 10
    assert text(nb.cells[0]) == "looping\n"
    assert "still running 2 s after being interrupted" in nb.metadata["nncourse"]["stopped"]
    assert nb.cells[1].outputs[0].ename == "NotRun"
    assert len(removed_folders) == 1 and not removed_folders[0][0].exists()


def test_a_crash_stops_only_that_notebook(removed_folders):
    """A kernel that exits mid-notebook: the rest is marked not run, its folders are still removed."""
    nb = run_cells("import os, time; print('crashing', flush=True); time.sleep(0.5); os._exit(3)", "print('never')")
    assert text(nb.cells[0]) == "crashing\n"
    assert nb.metadata["nncourse"]["stopped"] == "Kernel died"
    assert nb.cells[1].outputs[0].ename == "NotRun"
    assert len(removed_folders) == 1 and not removed_folders[0][0].exists()


# --- setting up the sandbox --------------------------------------------------------------------

@pytest.mark.parametrize("kernel_start", ["own sandbox"], indirect=True)
def test_missing_bubblewrap_stops_with_a_message_that_names_the_fix(monkeypatch, kernel_start):
    """Without bwrap, grading refuses to start, naming the package and the knowing way around."""
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
import numpy as np
from traitlets.config import Config
from nncourse import memgroup, sandbox, template
cells = [nbformat.v4.new_code_cell(s) for s in json.loads(sys.argv[1])]
nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
config = Config({"SandboxedKernelManager": {"data_variable": "MNIST_DIR"}})  # as the course's configuration
sandbox.SandboxedExecute(config=config, timeout=30).preprocess(nb, {"metadata": {"path": os.environ["HOME"]}})
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


@pytest.mark.parametrize("kernel_start", ["own sandbox"], indirect=True)
@pytest.mark.skipif(os.geteuid() != 0, reason="as an ordinary user, every other test here already runs this path")
def test_ordinary_user_gets_the_same_sandbox(listener, kernel_start):
    """Grading as an ordinary user (uid 65534) uses user namespaces: same view, no network."""
    port, accepted = listener
    home = Path(tempfile.mkdtemp(prefix="ordinary-user-"))  # pytest's folders are root's only
    os.chown(home, 65534, 65534)
    cells = ["import os; print(os.getuid(), sorted(os.listdir('/')))",
             f"print('connecting'); import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
             f"print('writing', os.path.isdir({str(home)!r})); open({str(home / 'outside.txt')!r}, 'w')",
             "print(sorted(os.listdir('/data/mnist/MNIST/raw'))[0])"]
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "MNIST_DIR": str(DATA_DIR)}
    try:
        run = subprocess.run(as_ordinary_user([sys.executable, "-c", ORDINARY_USER_SCRIPT, json.dumps(cells)]),
                             env=env, cwd=str(home), capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs = json.loads(run.stdout.strip().splitlines()[-1])
        assert outputs[0][0].startswith("65534 ")
        assert_only_system_folders(outputs[0][0])
        assert outputs[1] == ["connecting\n", "ConnectionRefusedError"] and accepted == []
        # the user's own home is not in the sandbox at all
        assert outputs[2] == ["writing False\n", "FileNotFoundError"] and not (home / "outside.txt").exists()
        assert outputs[3] == ["t10k-images-idx3-ubyte\n"]
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_kernel_cannot_reach_the_graders_own_streams(tmp_path):
    """The grader's stderr (here a log file) is not open in the kernel: it could otherwise write
    past the output cap into the grader's log, or read that log back through /proc/self/fd."""
    log = tmp_path / "grader-stderr.log"
    saved = os.dup(2)
    with open(log, "w") as stream:
        os.dup2(stream.fileno(), 2)
    try:
        nb = run_cells("import os\nlinks = set()\nfor fd in os.listdir('/proc/self/fd'):\n    try:\n"
                       "        links.add(os.readlink(f'/proc/self/fd/{fd}'))\n    except OSError:\n        pass\n"
                       "print(sorted(links))")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    links = text(nb.cells[0])
    assert "/dev/null" in links and str(log) not in links


# --- kernels forked from a warm template (SandboxedKernelManager.fork_server) --------------------

ATTACK_THE_TEMPLATE = """
import ctypes, errno, os, signal, socket
def status(pid):
    return dict(line.split(':\\t', 1) for line in open(f'/proc/{pid}/status').read().splitlines() if ':\\t' in line)
supervisor = os.getppid()
template = int(status(supervisor)['PPid'])
for pid in (supervisor, template):
    print('target', pid, 'uid', status(pid)['Uid'].split()[0], 'alive', os.path.exists(f'/proc/{pid}'))
    for name, attack in [('kill', lambda: os.kill(pid, signal.SIGKILL)),
                         ('mem', lambda: open(f'/proc/{pid}/mem', 'r+b')),
                         ('ptrace', lambda: ctypes.CDLL(None, use_errno=True).ptrace(16, pid, 0, 0) == 0
                                    or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'ptrace')))]:
        try:
            attack()
            print(name, 'succeeded')
        except OSError as err:
            print(name, errno.errorcode[err.errno])
control = os.path.dirname(os.path.dirname(os.getcwd())) + '/control'  # the template's folder
try:
    socket.socket(socket.AF_UNIX).connect(control + '/template.sock')
    print('connect succeeded')
except OSError as err:
    print('connect', errno.errorcode[err.errno])
held = []
for fd in map(int, os.listdir('/proc/self/fd')):
    try:
        s = socket.socket(fileno=os.dup(fd))
        held.append(s.getsockname())
        s.close()
    except OSError:
        pass
print('sockets', len(held) > 0, 'template', [name for name in held if str(name).startswith(control)])
"""


@pytest.mark.parametrize("kernel_start", ["forked from a template"], indirect=True)
def test_a_forked_kernel_cannot_reach_its_template_or_the_next_kernel(kernel_start):
    """Kernel A attacks the root processes it was forked from (signal, memory, ptrace, the
    template's socket, fds it might have kept) and leaves files in /tmp and /dev/shm; kernel B,
    forked next from the same template, sees none of it, has another uid and other random seeds,
    and the template still works."""
    seeds = "import os, random, numpy; print(os.getuid(), os.getcwd(), random.random(), numpy.random.rand())"
    preloaded = {"SandboxedExecute": {"preload_modules": ["random", "numpy.random", "torch"]}}  # seeded in the template
    left = "print('left-by-a' in os.listdir('/tmp'), 'left-by-a' in os.listdir('/dev/shm'))"
    a = run_cells(seeds, "open('/tmp/left-by-a', 'w'); open('/dev/shm/left-by-a', 'w')\n" + left,
                  ATTACK_THE_TEMPLATE, "import torch; print(torch.ones(2).sum().item())", **preloaded)
    b = run_cells(seeds, left,
                  "import torch; print(torch.ones(2).sum().item())", **preloaded)
    uid_a, cwd_a, *random_a = text(a.cells[0]).split()
    uid_b, cwd_b, *random_b = text(b.cells[0]).split()
    assert "0" not in (uid_a, uid_b) and uid_a != uid_b and cwd_a != cwd_b
    assert random_a[0] != random_b[0] and random_a[1] != random_b[1], "forked kernels share random seeds"
    assert text(a.cells[1]) == "True True\n"  # the files were written...
    assert text(b.cells[1]) == "False False\n"  # ...and the next kernel has a /tmp and /dev/shm of its own
    lines = text(a.cells[2]).splitlines()
    targets = [line.split() for line in lines if line.startswith("target")]
    assert [(t[3], t[5]) for t in targets] == [("0", "True"), ("0", "True")], lines  # root processes, there
    assert [line for line in lines if line.split()[0] in ("kill", "mem", "ptrace")] == \
        ["kill EPERM", "mem EACCES", "ptrace EPERM"] * 2, lines
    # its own ZeroMQ sockets are found, none of the template's
    assert lines[-2:] == ["connect EACCES", "sockets True template []"], lines
    assert text(a.cells[3]) == text(b.cells[2]) == "2.0\n"


GRADER_THAT_VANISHES = """
import os, sys, time
from jupyter_client.blocking import BlockingKernelClient
from nbclient.util import run_sync
from traitlets.config import Config
from nncourse import memgroup, sandbox, template
keep, modules, end = sys.argv[1:]
config = Config({"SandboxedKernelManager": {"fork_server": True, "data_variable": "MNIST_DIR",
                                            "keep_template_seconds": int(keep)},
                 "SandboxedExecute": {"preload_modules": modules.split(",") if modules else []}})
km = sandbox.SandboxedKernelManager(kernel_name="python3", config=config)
run_sync(km.start_kernel)()
client = BlockingKernelClient()
client.load_connection_info(km.get_connection_info())
client.start_channels()
client.wait_for_ready(timeout=120)
client.execute_interactive("import subprocess; subprocess.Popen(['sleep', '300'], start_new_session=True)",
                           timeout=60)
time.sleep(0.5)
uid = str(km._uid)  # the kernel's own: the kernel and the sleep it started
running = [p for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/status")
           and open(f"/proc/{p}/status").read().split("Uid:")[1].split()[0] == uid]
print("grader:", type(km._template.process).__name__, uid, len(running), km._template.process.pid, km._template.base, flush=True)
if end == "vanish":
    os._exit(0)  # no clean-up at all: as a worker killed with SIGKILL
run_sync(km.shutdown_kernel)()
"""


def grader(keep="0", modules="", end="vanish"):
    """Run GRADER_THAT_VANISHES (keep_template_seconds, preloaded modules, "vanish" or "end"): how it
    got its template, the kernel's uid, its processes before the grader ended, the template's pid and folder."""
    env = dict(os.environ, MNIST_DIR=str(DATA_DIR), PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-c", GRADER_THAT_VANISHES, keep, modules, end], capture_output=True, text=True,
                         timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.split("grader:")[-1].split()


def processes_of_uid(uid):
    return [p.parent.name for p in Path("/proc").glob("[0-9]*/status") if _uid_of(p) == uid and _alive(p)]


def wait_until(condition, seconds):
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.1)
    return condition()


@pytest.mark.parametrize("kernel_start", ["forked from a template"], indirect=True)
def test_the_template_and_its_kernels_end_with_the_grader_process(kernel_start):
    """A grader process that ends without any clean-up leaves no template, no kernel and no
    process its kernel started behind; the next template removes the folder it left."""
    _, uid, running, template_pid, folder = grader()
    assert int(running) == 2  # the kernel and the process it started, before the grader ended
    deadline, left = time.time() + 10, ["?"]
    while left and time.time() < deadline:
        left = [p.parent.name for p in Path("/proc").glob("[0-9]*/status") if _uid_of(p) == uid and _alive(p)]
        left += [template_pid] if _alive(Path(f"/proc/{template_pid}/status")) else []
        time.sleep(0.1)
    assert not left, f"still running after the grader process ended: {left}"
    assert Path(folder).is_dir()  # nothing removed it...
    # a new template starts (its own preload list): it removes the folder
    assert text(run_cells("print(1)", SandboxedExecute={"preload_modules": ["json"]}).cells[0]) == "1\n"
    assert not Path(folder).exists()


@pytest.mark.parametrize("kernel_start", ["forked from a template"], indirect=True)
def test_a_kept_template_serves_the_next_grader_process_of_its_settings_then_ends_on_its_own(kernel_start):
    """With keep_template_seconds, a grader process that vanishes leaves its template up, but not its
    kernel (whose stand-in sees the grader gone). The next grader process of the same settings takes
    the template over; one that finds it owned, or has other settings, starts its own, and the latter
    stops the kept one. A template without an owner for keep_template_seconds ends, and the next
    template removes its folder and memory group."""
    keep = "15"
    how, uid, running, first, folder = grader(keep, "wave", "vanish")
    assert (how, running) == ("Popen", "2")  # started by this grader; the kernel and the process it started
    assert wait_until(lambda: not processes_of_uid(uid), 5), processes_of_uid(uid)  # well before 15 s
    assert _alive(Path(f"/proc/{first}/status"))  # ...while the template stays up
    how, _, _, second, _ = grader(keep, "wave", "end")
    assert (how, second) == ("NotAChild", first)  # taken over: the same template
    held = template.owner_connection(Path(folder) / "control")  # this process owns it now
    assert held is not None and template.owner_connection(Path(folder) / "control") is None  # one owner only
    how, _, _, third, third_folder = grader(keep, "wave", "end")
    assert how == "Popen" and third != first  # owned: a template of its own
    held.close()
    how, _, _, fourth, fourth_folder = grader(keep, "colorsys", "end")  # other settings: the kept ones stop
    assert how == "Popen" and wait_until(lambda: not any(_alive(Path(f"/proc/{p}/status")) for p in (first, third)), 10)
    assert not Path(folder).exists() and not Path(third_folder).exists()
    assert wait_until(lambda: not _alive(Path(f"/proc/{fourth}/status")), 40)  # no owner for 15 s: it ends
    groups = [g for g in memgroup._own_memory_folder()[0].glob(f"{memgroup.PREFIX}{fourth}-*")]
    assert Path(fourth_folder).is_dir() and groups
    assert run_cells("print(1)", SandboxedExecute={"preload_modules": ["json", "base64"]}).cells[0].outputs  # new
    assert not Path(fourth_folder).exists() and not [g for g in groups if g.exists()]


def test_a_template_recipe_changes_with_the_files_of_its_preloaded_packages(tmp_path, monkeypatch):
    """An upgraded package (a new file or modification time where its package is imported from) gives
    its recipe another key, so a template kept from before the upgrade serves no grader; the key is
    computed without importing the package."""
    package = tmp_path / "upgraded_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = {"modules": ["upgraded_pkg.sub", "json"]}
    before = template.recipe_key(recipe)
    assert template.recipe_key(recipe) == before
    os.utime(package / "__init__.py", ns=(1, 1))
    assert template.recipe_key(recipe) != before and "upgraded_pkg" not in sys.modules


def _uid_of(status):
    try:
        return status.read_text().split("Uid:")[1].split()[0]
    except (OSError, IndexError):
        return None


def _alive(status):
    """Whether the process of this /proc/<pid>/status runs (not gone, not a zombie)."""
    try:
        return "\nState:\tZ" not in status.read_text()
    except OSError:
        return False


@pytest.mark.parametrize("kernel_start", ["forked from a template"], indirect=True)
def test_a_template_started_early_serves_only_the_settings_of_its_recipe(kernel_start, tmp_path, monkeypatch):
    """A run saves its template's recipe; the next run starts that template before it knows its
    settings, and its first kernel claims it when the settings match, or stops it when not."""
    recipe = tmp_path / "kernel-template.json"
    monkeypatch.setattr(template.KernelTemplate, "recipe_file", recipe)
    monkeypatch.setattr(template.KernelTemplate, "early", None)
    wave, colorsys = ({"SandboxedExecute": {"preload_modules": [name]}} for name in ("wave", "colorsys"))
    probe = "import sys; print('wave' in sys.modules, 'colorsys' in sys.modules)"
    monkeypatch.setattr(template.KernelTemplate, "running", {})
    assert text(run_cells(probe, **wave).cells[0]) == "True False\n"  # the first run saves its recipe
    assert json.loads(recipe.read_text())["modules"] == ["wave"]
    for settings, printed, claimed in ((wave, "True False\n", True), (colorsys, "False True\n", False)):
        monkeypatch.setattr(template.KernelTemplate, "running", {})  # as in a new run
        template.KernelTemplate.start_early(recipe)
        early = template.KernelTemplate.early
        assert early is not None and early.process.poll() is None
        assert text(run_cells(probe, **settings).cells[0]) == printed
        assert (list(template.KernelTemplate.running.values()) == [early]) == claimed
        assert (early.process.poll() is None) == claimed  # one that does not match is stopped


@pytest.mark.parametrize("kernel_start", ["forked from a template"], indirect=True)
def test_a_recipe_saved_by_an_older_version_is_replaced(kernel_start, tmp_path, monkeypatch):
    """A recipe file written before templates had a memory cap (no "memory"): its early start does not
    fail the run, and the first kernel, whose settings differ, stops it and starts the current one."""
    recipe = tmp_path / "kernel-template.json"
    monkeypatch.setattr(template.KernelTemplate, "recipe_file", recipe)
    monkeypatch.setattr(template.KernelTemplate, "early", None)
    monkeypatch.setattr(template.KernelTemplate, "running", {})
    run_cells("x = 1")  # saves the current recipe
    older = json.loads(recipe.read_text())
    del older["memory"]
    recipe.write_text(json.dumps(older))
    monkeypatch.setattr(template.KernelTemplate, "running", {})  # as in a new run
    template.KernelTemplate.start_early(recipe)
    early = template.KernelTemplate.early
    assert early is not None and early.memory is None
    assert text(run_cells("print('ran')").cells[0]) == "ran\n"
    assert early.process.poll() is not None and "memory" in json.loads(recipe.read_text())


@pytest.mark.parametrize("kernel_start", ["forked from a template"], indirect=True)
def test_a_template_that_cannot_start_leaves_kernels_to_start_on_their_own(kernel_start, monkeypatch, caplog):
    """No folder for the template (here a missing one): a warning says why, and the kernel starts
    in a sandbox of its own, as without a template."""
    monkeypatch.setattr(template, "PLACE", "/nonexistent/nncourse")
    monkeypatch.setattr(template.KernelTemplate, "running", {})
    monkeypatch.setattr(template.KernelTemplate, "early", None)
    nb = run_cells("import os; print(os.getcwd())")
    assert text(nb.cells[0]).startswith(tempfile.gettempdir() + "/nncourse-scratch-")  # not a template's folder
    assert "the kernel template cannot start" in caplog.text and "/nonexistent/nncourse" in caplog.text
    assert template.KernelTemplate.running == {}


@pytest.mark.parametrize("kernel_start", ["forked from a template"], indirect=True)
def test_a_template_whose_kernels_die_at_start_is_given_up_for_kernels_of_their_own(kernel_start, monkeypatch,
                                                                                 caplog):
    """A template that is up but whose kernels die before their first cell (here each is told to start
    in a folder that does not exist): the notebook runs again in a sandbox of its own, a warning says
    why, and the later notebooks of this process do not ask the template again."""
    monkeypatch.setattr(template.KernelTemplate, "running", {})
    monkeypatch.setattr(template.KernelTemplate, "given_up", set())
    monkeypatch.setattr(template.KernelTemplate, "early", None)
    asked, stand_in = [], template.KernelTemplate.stand_in_command

    def broken(self, kernel_cmd, request):
        asked.append(self)
        return stand_in(self, kernel_cmd, dict(request, cwd="/nonexistent"))
    monkeypatch.setattr(template.KernelTemplate, "stand_in_command", broken)
    for _ in range(2):
        nb = run_cells("import os; print(os.getcwd())")
        assert text(nb.cells[0]).startswith(tempfile.gettempdir() + "/nncourse-scratch-"), text(nb.cells[0])
    assert len(asked) == 1 and asked[0].process.poll() is not None  # asked once, then stopped
    assert "died before its first cell" in caplog.text and "/nonexistent" in caplog.text  # from the template's log
    assert list(template.KernelTemplate.given_up) == [asked[0].key]


@pytest.mark.parametrize("kernel_start", ["own sandbox"], indirect=True)  # no kernel here
def test_only_a_grade_that_runs_its_kernels_in_process_starts_a_template_early(tmp_path, monkeypatch, kernel_start):
    """`python -m nncourse grade` starts the saved template early for one submission, or --workers 1,
    and not for a batch of several workers, a Dask cluster or another command."""
    from nncourse import __main__ as entry
    started = []
    monkeypatch.setattr(template.KernelTemplate, "start_early", lambda recipe: started.append(recipe))
    for student in ("alice", "bob"):
        (tmp_path / "submitted" / student).mkdir(parents=True)
    course = ["--course", str(tmp_path)]
    for argv, early in [(["grade", "alice"], True), (["grade", "--workers", "1"], True), (["grade"], False),
                        (["grade", "alice", "--scheduler", "tcp://x:8786"], False), (["report"], False)]:
        started.clear()
        entry.start_kernel_template_early(course + argv)
        assert started == ([tmp_path / ".batch" / "kernel-template.json"] if early else []), argv


def missing_first_status_messages(monkeypatch, misses):
    """Make each new client's IOPub miss the status messages of its first `misses` kernel_info requests,
    as a subscription that is not up yet does (ZeroMQ's slow joiner). Returns the list of the IOPub
    waits that ran out while the client was getting ready."""
    ran_out, make_client = [], sandbox.SandboxedKernelManager.client

    def client(self, **kw):
        kc, asked = make_client(self, **kw), []
        kernel_info, wait_for_ready = kc.kernel_info, kc.wait_for_ready

        def counted_kernel_info():
            asked.append(kernel_info())
            return asked[-1]

        async def missing_wait_for_ready(timeout=None):
            channel = kc.iopub_channel
            get_msg = channel.get_msg

            async def missing_get_msg(timeout=None):
                while True:
                    try:
                        msg = await get_msg(timeout=timeout)
                    except Empty:
                        ran_out.append(timeout)
                        raise
                    if msg["parent_header"].get("msg_id") not in asked[:misses]:
                        return msg
            channel.get_msg = missing_get_msg
            try:
                return await wait_for_ready(timeout)
            finally:
                channel.get_msg = get_msg
        kc.kernel_info, kc.wait_for_ready = counted_kernel_info, missing_wait_for_ready
        return kc
    monkeypatch.setattr(sandbox.SandboxedKernelManager, "client", client)
    return ran_out


@pytest.mark.parametrize("misses", [1, 3])
def test_the_kernel_client_is_ready_as_soon_as_both_channels_answer(monkeypatch, misses):
    """A missed IOPub subscription costs waits of 0.05 s, doubling at each miss, and nothing once both
    channels have answered; jupyter_client's own client, the control, waits out at least 0.2 s."""
    ran_out = missing_first_status_messages(monkeypatch, misses)
    nb = run_cells("print('first output')")
    assert text(nb.cells[0]) == "first output\n"
    assert ran_out[:misses] == [0.05 * 2 ** k for k in range(misses)], ran_out
    assert len(ran_out) <= misses + 1, ran_out  # one more only if the machine is slower than 0.05 s
    ran_out.clear()
    nb = run_cells("print('first output')",
                   SandboxedKernelManager={"client_factory": "jupyter_client.asynchronous.AsyncKernelClient"})
    assert text(nb.cells[0]) == "first output\n"
    assert sum(ran_out) >= 0.2, ran_out  # at least its wait for silence at the end


ECHO_PROBES = "def probe(test, notebook, inputs):\n    return dict(inputs)\n"


def set_up_notebook(inputs):
    """A student's cell that moves away, the set-up cell (as InsertProbes leaves it), a test cell that
    reports, and a cell that prints the length of the set-up cell's source as the kernel ran it."""
    from nncourse import verdicts
    set_up = nbformat.v4.new_code_cell(verdicts.kernel_cell_source(ECHO_PROBES, inputs))
    set_up.metadata["nncourse"] = {"set_up": True}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nos.chdir('/')"), set_up,
                                         nbformat.v4.new_code_cell('_report("echo")'),
                                         nbformat.v4.new_code_cell("print(len(In[2]), '.probe-inputs' in In[2])")])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def run_set_up(nb, data_dir):
    from traitlets.config import Config
    config = Config({"SandboxedKernelManager": {"data_dir": str(data_dir), "fork_server": FORKED["forked"]}})
    sandbox.SandboxedExecute(config=config, timeout=TIMEOUT).preprocess(nb, {"metadata": {"path": str(REPO)}})
    from nncourse import verdicts
    report = next(o for o in nb.cells[2].outputs if verdicts.REPORT_MIME in o.get("data", {}))
    return verdicts.decode_report(report["data"][verdicts.REPORT_MIME], 64 * verdicts.MIB), text(nb.cells[3])


def test_the_set_up_cell_reads_the_inputs_from_the_data_folder(tmp_path):
    """The kernel reads the probes' inputs from a read-only file in the data folder, by its absolute path
    (the student's cell moved away), so the set-up cell it runs is small; the notebook keeps its cell."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    inputs = {"x": np.random.default_rng(0).standard_normal((300, 300))}
    nb = set_up_notebook(inputs)
    sanitized = nb.cells[1].source
    echoed, ran = run_set_up(nb, data_dir)
    assert np.array_equal(echoed["x"], inputs["x"]) and echoed["x"].dtype == inputs["x"].dtype
    length, names_the_file = ran.split()
    assert int(length) < 5000 and names_the_file == "True", ran
    assert nb.cells[1].source == sanitized and len(sanitized) > 700_000
    [written] = (data_dir / ".probe-inputs").iterdir()
    assert written.stat().st_mode & 0o777 == 0o644


def test_a_data_folder_the_grader_cannot_write_keeps_the_inputs_in_the_cell(tmp_path, caplog):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    (data_dir / ".probe-inputs").write_text("a file where the folder would go")
    inputs = {"x": np.arange(12.0).reshape(3, 4)}
    echoed, ran = run_set_up(set_up_notebook(inputs), data_dir)
    assert np.array_equal(echoed["x"], inputs["x"])
    assert ran.split()[1] == "False", ran
    assert "the probes' inputs stay in the set-up cell" in caplog.text
