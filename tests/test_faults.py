"""Faults survived at scale: a Dask worker killed mid-batch, the driver killed mid-batch, and
workers unfit to grade (no data, other package versions). Each ends with the gradebook of an
undisturbed run (sequential nbgrader, the `graded` fixture), cell by cell."""
import os
import signal
import subprocess
import sys
import threading
import time

from nncourse import batch, grading
from nncourse.assignments.tutorial3.samples import BY_NAME

from conftest import local_dask, make_course


def course_with(tmp_path_factory, name, students):
    course = make_course(tmp_path_factory, name)
    grading.write_samples(course, [BY_NAME[s] for s in students])
    return course


def wait_for(condition, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


def test_dask_worker_killed_mid_batch_has_its_submissions_graded_elsewhere(graded, tmp_path_factory):
    """A worker killed while it grades: its submission runs again on the other worker."""
    students = ["correct", "constant_batch", "numpy_relu_mask_missing"]
    course = course_with(tmp_path_factory, "dask_kill", students)
    results, errors = {}, []

    def run(address):
        try:
            results.update(batch.grade(course, scheduler=address, workers=2))
        except Exception as err:  # seen by the assertions below
            errors.append(err)
    with local_dask(tmp_path_factory.mktemp("dask_kill"), [{}, {}]) as address:
        from distributed import Client
        driver = threading.Thread(target=run, args=(address,))
        driver.start()
        with Client(address) as client:
            victim = wait_for(lambda: errors or next((w for w, keys in client.processing().items() if keys), None),
                              120, "a worker to start grading")
            assert not errors, errors
            time.sleep(5)  # its kernel is now running the notebook
            pid = client.run(os.getpid, workers=[victim])[victim]
            assert client.processing()[victim], "the worker finished before it could be killed"
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        driver.join(timeout=900)
    assert not errors and set(results) == set(students)
    assert all(r.graded and not r.reason for r in results.values())
    assert not [r for r in results.values() if r.worker.endswith(f":{pid}")]  # nothing came from the killed one
    assert grading.cell_scores(course) == {s: graded[s] for s in students}


def test_driver_killed_mid_batch_resumes_where_it_stopped(graded, tmp_path_factory):
    """`nncourse grade` killed after grading some students: the rerun grades only the others."""
    students = ["correct", "constant_batch", "numpy_update_ascent", "cnn_forgets_bias"]
    course = course_with(tmp_path_factory, "driver_kill", students)
    state = course / ".batch" / "tutorial3"
    command = [sys.executable, "-m", "nncourse", "--course", str(course), "grade", "--workers", "2"]
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: [s for s in students if (state / f"{s}.json").exists()], 600, "a first student graded")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and its workers
        first.wait()
    done = [s for s in students if (state / f"{s}.json").exists()]
    assert 0 < len(done) < len(students), done
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(students) - len(done)} to grade, {len(done)} unchanged since graded" in again.stdout
    assert grading.cell_scores(course) == {s: graded[s] for s in students}


def test_worker_without_data_refuses_and_the_other_worker_grades(graded, tmp_path_factory):
    """A Dask worker whose data folder is empty refuses each task, which goes to the other worker."""
    students = ["correct", "torch_ce_mean_over_classes"]
    course = course_with(tmp_path_factory, "no_data", students)
    empty = tmp_path_factory.mktemp("empty_mnist")
    lines = []
    with local_dask(tmp_path_factory.mktemp("dask_no_data"), [{}, {"MNIST_DIR": str(empty)}]) as address:
        results = batch.grade(course, scheduler=address, workers=2, log=lines.append)
    refusals = [line for line in lines if "refused by worker" in line]
    assert refusals and all("data folder is missing" in line and str(empty) in line for line in refusals), lines
    assert all("sent to another worker" in line for line in refusals)
    assert len({r.worker for r in results.values()}) == 1 and all(r.graded and not r.reason for r in results.values())
    assert grading.cell_scores(course) == {s: graded[s] for s in students}


def test_workers_with_other_package_versions_leave_submissions_ungraded_until_fixed(graded, tmp_path_factory,
                                                                                    monkeypatch):
    """When no worker has the driver's versions, nothing is graded, the reason is recorded, and the
    next run, with matching workers, grades every student."""
    students = ["correct", "numpy_update_ascent"]
    course = course_with(tmp_path_factory, "versions", students)
    versions = batch.package_versions
    real = versions(["numpy"])
    monkeypatch.setattr(batch, "package_versions", lambda names: dict(versions(names), numpy="0.0"))  # driver only
    results = batch.grade(course, workers=2)  # spawned workers report their own, real versions
    for record in results.values():
        assert not record.graded
        assert f"numpy {real['numpy']} here, 0.0 on the driver" in record.reason
    assert grading.cell_scores(course) == {}
    monkeypatch.undo()
    lines = []
    batch.grade(course, workers=2, log=lines.append)
    assert "2 to grade because not graded yet" in "\n".join(lines)
    assert grading.cell_scores(course) == {s: graded[s] for s in students}
