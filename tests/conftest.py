"""Shared fixtures. Grading is slow (about 40 s per notebook), so each way of grading runs once
per session, on every fixture notebook, in a fresh copy of the course with its own gradebook."""
import contextlib
import os
import socket
import threading
from pathlib import Path

import pytest

from nncourse import grading, notebook
from nncourse.assignments.tutorial3 import data
from nncourse.course import Course
from nncourse.assignments.tutorial3.samples import BY_NAME, STUDENTS, STYLES

REPO = Path(__file__).resolve().parent.parent
SOURCE = Course.load(REPO).notebook("source")
RELEASE = Course.load(REPO).notebook("release")
SEED = Path(__file__).resolve().parent / "seed" / "tutorial3_seed.ipynb.json"
DATA_DIR = REPO / "data" / "mnist"


def make_course(tmp_path_factory, name, extra_config=""):
    """A fresh course folder (config, source, MNIST) with an empty gradebook and a new release."""
    root = grading.new_course(tmp_path_factory.mktemp(name), REPO, extra_config)
    data.provision(DATA_DIR)
    os.environ["MNIST_DIR"] = str(DATA_DIR)  # the courses' nbgrader_config.py reads it
    grading.generate_release(root, Course.load(REPO).assignment)  # a test may add a second assignment
    return root


# The sample students that plain, sequential `nbgrader autograde` grades (the `graded` fixture):
# one of each kind of bug, and those the fault tests compare with. Every sample student and style
# is graded in the batch (test_batch.py), which compares its gradebook with this one; grading them
# all one at a time as well would not fit the suite's time on 2 cores.
SEQUENTIAL = [BY_NAME[name] for name in ("correct", "constant_batch", "numpy_relu_mask_missing", "numpy_update_ascent",
                                         "torch_ce_mean_over_classes", "cnn_forgets_bias")]


def submit_fixtures(course, everyone=True):
    """The source, the blank release and every sample student and style, as submissions (with
    `everyone` False: only the SEQUENTIAL sample students)."""
    samples = STUDENTS + STYLES if everyone else SEQUENTIAL
    notebook.write(notebook.read(SOURCE), grading.submission_path(course, "solution"))
    notebook.write(notebook.read(grading.release_path(course)), grading.submission_path(course, "blank"))
    grading.write_samples(course, samples)
    return ["solution", "blank", *(s.name for s in samples)]


@pytest.fixture(scope="session")
def source_nb():
    return notebook.read(SOURCE)


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    return make_course(tmp_path_factory, "course")


@pytest.fixture(scope="session")
def graded(course):
    """Gradebook scores after plain `nbgrader autograde` (one at a time) of the solution, the blank
    release and the SEQUENTIAL sample students, and feedback."""
    submit_fixtures(course, everyone=False)
    grading.autograde(course)
    grading.generate_feedback(course)
    return grading.cell_scores(course)


@contextlib.contextmanager
def tcp_listener():
    """A TCP listener on 127.0.0.1 that records every connection it accepts: (port, accepted)."""
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


@contextlib.contextmanager
def local_dask(folder, workers):
    """A real `dask scheduler` and one `dask worker` per entry of `workers` (extra environment
    variables for it) on 127.0.0.1, each in its own process group, run in `folder`: they never see
    the course folder and get each notebook from the driver. Yields the scheduler's address."""
    import json
    import subprocess
    import sys
    import time
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    env = dict(os.environ, PYTHONPATH=str(REPO), MNIST_DIR=str(DATA_DIR))
    scheduler_file = folder / "scheduler.json"
    common = dict(cwd=folder, stdout=subprocess.DEVNULL, stderr=open(folder / "dask.log", "w"), start_new_session=True)
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], env=env, **common)]
    try:
        for _ in range(60):
            if scheduler_file.exists():
                break
            time.sleep(0.5)
        for extra in workers:
            procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                                           "--no-dashboard", "--memory-limit", "0", "--host", "127.0.0.1"],
                                          env=dict(env, **extra), **common))
        address = json.loads(scheduler_file.read_text())["address"]
        from distributed import Client
        with Client(address) as client:
            client.wait_for_workers(len(workers), timeout=120)
        yield address
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
        for proc in procs:
            proc.wait(timeout=30)


@pytest.fixture
def listener():
    with tcp_listener() as port_and_accepted:
        yield port_and_accepted


SLOW_FIXTURES = {"graded", "batch_local", "hostile", "dask_cluster"}  # each grades whole notebooks


def pytest_collection_modifyitems(items):
    """Tests that need a graded course are slow: `pytest -m "not slow"` leaves them out."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
