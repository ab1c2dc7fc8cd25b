"""Parallel batch grading: same gradebook as sequential nbgrader, locally and on a Dask cluster;
broken submissions are graded with a reason; reruns are idempotent."""
import json
import os
import subprocess
import sys
import time

import pytest

from nncourse import batch, grading, notebook
from nncourse.course import Course
from nncourse.verdicts import REPORT_MIME
from nncourse.assignments.tutorial3.samples import BY_NAME, STUDENTS, STYLES

from conftest import REPO, SEQUENTIAL, local_dask, make_course, submit_fixtures

TIMEOUT = 60  # per cell in these courses, so that the endless loop below is stopped soon


def broken_submissions(course):
    """Submissions that cannot be graded normally, next to the fixtures."""
    release = notebook.read(grading.release_path(course))
    correct = notebook.fill_blanks(release, BY_NAME["correct"].answers())

    def with_first_line(cell_id, line):
        nb = notebook.fill_blanks(correct, {})
        cell = notebook.cells_by_id(nb)[cell_id]
        cell.source = line + "\n" + cell.source
        return nb

    notebook.write(with_first_line("task2_cross_entropy_numpy", "np.lib.stride_tricks.as_strided(np.zeros(1), shape=(2**40,), strides=(2**24,)).sum()  # segfault"),
                   grading.submission_path(course, "kernel_dies"))
    notebook.write(with_first_line("task2_update_numpy", "while True: pass"),
                   grading.submission_path(course, "endless_loop"))
    corrupt = grading.submission_path(course, "corrupt_notebook")
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b'{"cells": [\xff\xfe not json')
    missing = grading.submission_path(course, "missing_notebook")
    missing.parent.mkdir(parents=True)
    (missing.parent / "notes.txt").write_text("I forgot to upload the notebook")
    return ["kernel_dies", "endless_loop", "corrupt_notebook", "missing_notebook"]


def make_batch_course(tmp_path_factory, name):
    course = make_course(tmp_path_factory, name, extra_config=f"c.Execute.timeout = {TIMEOUT}")
    return course, submit_fixtures(course) + broken_submissions(course)


@pytest.fixture(scope="session")
def batch_local(tmp_path_factory):
    course, students = make_batch_course(tmp_path_factory, "batch_local")
    started = time.time()
    results = batch.grade(course, workers=2)
    return course, results, grading.cell_scores(course), time.time() - started


def test_batch_gradebook_equals_sequential_nbgrader(batch_local, graded):
    course, results, scores, _ = batch_local
    common = set(graded)
    assert common <= set(scores)
    for student in sorted(common):
        assert scores[student] == graded[student], student


def test_grades_are_the_same_without_the_grading_profile(tmp_path_factory, batch_local):
    """The first 11 sample students, graded with the test set evaluated every 10 iterations as in the
    notebook, the images normalised in the kernel and the test set predicted whole, get the grades, cell by cell, that the course's
    profile (every 100, the grader's prepared copy, in chunks) gave them in the batch."""
    unprofiled = make_course(tmp_path_factory, "no_profile", extra_config="c.GradingProfile.test_every = 0\n"
                                                                          "c.GradingProfile.prepared_data = False\n"
                                                                          "c.GradingProfile.chunk_rows = 0")
    students = STUDENTS[:11]
    grading.write_samples(unprofiled, students)
    results = batch.grade(unprofiled, workers=2)
    executed = notebook.read(unprofiled / ".batch" / "tutorial3" / "correct.executed.ipynb")
    assert "iters_per_test=10)" in notebook.cells_by_id(executed)["task2_train"].source  # the profile was off
    assert "_graders_copy" not in notebook.cells_by_id(executed)["preprocess_normalize"].source
    assert "_in_chunks" not in notebook.cells_by_id(executed)["gradient_descent"].source
    profiled = notebook.read(Course.of(batch_local[0]).notebook("autograded", "correct"))  # and on in the batch
    assert "_graders_copy(\"train_imgs\"" in notebook.cells_by_id(profiled)["preprocess_normalize"].source
    assert "iters_per_test=100)" in notebook.cells_by_id(profiled)["task2_train"].source
    assert "_in_chunks(net.forward_pass, test_imgs, 1000)" in notebook.cells_by_id(profiled)["gradient_descent"].source
    assert all(r.graded and not r.reason for r in results.values())
    assert grading.cell_scores(unprofiled) == {s.name: batch_local[2][s.name] for s in students}


@pytest.mark.parametrize("student", [s for s in STUDENTS if s not in SEQUENTIAL], ids=lambda s: s.name)
def test_sample_student_graded_only_in_the_batch_gets_the_designed_grade(batch_local, source_nb, student):
    tests = notebook.autograded_ids(source_nb)
    got = {g: s for g, (s, m, _) in batch_local[2][student.name].items() if g in tests}
    assert got == {g: (0.0 if g in student.fails else points) for g, points in tests.items()}, student.name


def test_one_submission_whose_verdicts_wait_for_the_kernel_gets_the_designed_grade(tmp_path_factory, source_nb):
    """Graded alone (its kernel has every core), a check that retrains in a second kernel is decided
    after the kernel, from the reports of the tests before it, though those were decided (and their
    outputs became verdicts) while the kernel ran. Here Task 3's accuracy: its loss is missing, so
    the model is retrained with correct helpers and keeps its points."""
    course = make_course(tmp_path_factory, "one_waits")
    student = BY_NAME["torch_ce_missing"]
    grading.write_samples(course, [student])
    assert batch.grade(course, students=[student.name], workers=1)[student.name].graded
    tests = notebook.autograded_ids(source_nb)
    got = {g: s for g, (s, m, _) in grading.cell_scores(course)[student.name].items() if g in tests}
    assert got == {g: (0.0 if g in student.fails else points) for g, points in tests.items()}
    assert got["task3_mlp_torch_accuracy"] == 2.0 and "task3_cross_entropy_torch_correct" in student.fails


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.name)
def test_correct_code_in_any_style_earns_every_point_in_the_batch(batch_local, source_nb, style):
    tests = notebook.autograded_ids(source_nb)
    got = {g: s for g, (s, m, _) in batch_local[2][style.name].items() if g in tests}
    assert sum(got.values()) == 42 and len(got) == 27, {g: s for g, s in got.items() if s != tests[g]}


def test_batch_submission_records_equal_sequential_nbgrader(batch_local, course, graded):
    from nbgrader.api import Gradebook
    batch_course = batch_local[0]

    def records(root):
        with Gradebook(f"sqlite:///{root / 'gradebook' / 'gradebook.db'}") as gb:
            return {s.student.id: (s.timestamp, s.score, s.max_score, s.code_score, s.needs_manual_grade,
                                   s.late_submission_penalty, len(s.notebooks))
                    for s in gb.find_assignment("tutorial3").submissions}

    mine, theirs = records(batch_course), records(course)
    assert {s: mine[s] for s in theirs} == theirs
    for student in theirs:  # nbgrader's own files for each student
        assert (batch_course / "autograded" / student / "tutorial3" / "tutorial3.ipynb").exists()


def test_workers_decide_the_verdicts_so_reports_never_reach_the_driver(batch_local):
    """The executions the driver keeps hold each test's verdict, decided on the worker, not the kernel's report."""
    state = batch_local[0] / ".batch" / "tutorial3"
    kept = {p.name.split(".")[0]: [o for c in notebook.read(p).cells for o in c.get("outputs", [])]
            for p in state.glob("*.executed.ipynb")}
    assert json.loads((state / "numpy_relu_mask_missing.outcome.json").read_text())["decided"]
    assert "Test failed: " in json.dumps(kept["numpy_relu_mask_missing"])
    assert "correct" in kept and not [s for s, outs in kept.items() if any(REPORT_MIME in o.get("data", {}) for o in outs)]


def test_broken_submissions_are_graded_with_a_reason(batch_local, source_nb):
    course, results, scores, _ = batch_local
    tests = notebook.autograded_ids(source_nb)

    def earned(student):
        return {g for g, (s, m, _) in scores[student].items() if g in tests and s == m}

    assert "cannot be read" in results["corrupt_notebook"].reason
    assert "no notebook submitted" in results["missing_notebook"].reason
    for student in ["corrupt_notebook", "missing_notebook"]:
        assert set(scores[student]) == set(scores["correct"]) and not earned(student)
    assert "execution stopped" in results["kernel_dies"].reason
    assert earned("kernel_dies") == {"task1_random_batch_changes", "task1_random_batch_correct"}
    assert f"longer than the {TIMEOUT} s limit" in results["endless_loop"].reason
    assert set(tests) - earned("endless_loop") == {"task2_update_numpy_correct"}
    log = (course / "logs" / "tutorial3" / "kernel_dies.log").read_text()
    assert "reason: execution stopped" in log


def test_rerun_skips_unchanged_and_regrades_interrupted(batch_local):
    course, _, scores, _ = batch_local
    state = course / ".batch" / "tutorial3"
    (state / "constant_batch.json").unlink()  # as if the run stopped before recording this student
    lines = []
    results = batch.grade(course, workers=2, log=lines.append)
    assert "1 to grade" in lines[0], lines
    assert grading.cell_scores(course) == scores  # nothing lost, nothing counted twice
    assert json.loads((state / "constant_batch.json").read_text())["graded"]
    assert results["constant_batch"].worker  # executed before, replayed from the kept execution


def test_regrading_one_student_alone_gives_the_same_grades(batch_local):
    """One worker, whose kernel has every core: verdicts in idle CPU time, retraining after the kernel."""
    course, _, scores, _ = batch_local
    alone = ["numpy_relu_mask_missing", "torch_ce_mean_over_classes"]  # the second one's checks retrain
    results = batch.grade(course, alone, workers=1, force=True)
    assert sorted(results) == alone
    assert grading.cell_scores(course) == scores


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A Dask scheduler and two workers on 127.0.0.1."""
    with local_dask(tmp_path_factory.mktemp("dask"), [{}, {}]) as address:
        yield address


# Grading every fixture a third time would take the suite past 30 minutes on 2 cores.
DASK_STUDENTS = ["correct", "constant_batch", "torch_ce_mean_over_classes", "blank", "kernel_dies", "corrupt_notebook"]


def test_dask_cluster_gives_the_same_gradebook(dask_cluster, batch_local, tmp_path_factory):
    course, _ = make_batch_course(tmp_path_factory, "batch_dask")
    results = batch.grade(course, DASK_STUDENTS, scheduler=dask_cluster, workers=2)
    assert set(results) == set(DASK_STUDENTS)
    workers = {r.worker for r in results.values() if r.worker}
    assert len(workers) == 2, f"expected both dask workers to grade, got {workers}"
    local_scores, local_results = batch_local[2], batch_local[1]
    assert grading.cell_scores(course) == {s: local_scores[s] for s in DASK_STUDENTS}
    assert {s: r.reason.split(":")[0] for s, r in results.items()} == \
        {s: local_results[s].reason.split(":")[0] for s in DASK_STUDENTS}


def test_report_and_per_cell_export(batch_local, source_nb):
    from nncourse import report
    course, _, scores, _ = batch_local
    page = report.write_report(course).read_text()
    written = [g for g, c in notebook.cells_by_id(source_nb).items()
               if notebook.meta(c).get("grade") and g not in notebook.autograded_ids(source_nb)]
    assert written and page.count('class="histogram"') == 5 + len(written)  # one per task, one per question
    assert "task2_mlp_numpy_backward_correct" in page and "grad_w1 is wrong" in page
    assert "kernel_dies" in page and "execution stopped" in page
    import csv
    with open(grading.export_grades(course), newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["student_id"] for r in rows} == set(scores)
    row = next(r for r in rows if r["student_id"] == "numpy_relu_mask_missing")
    assert float(row["task2_mlp_numpy_backward_correct"]) == 0 and float(row["task1_random_batch_correct"]) == 2
    assert float(row["task2_total"]) == sum(v[0] for g, v in scores["numpy_relu_mask_missing"].items()
                                           if g.startswith("task2"))
    assert float(row["total"]) == sum(v[0] for v in scores["numpy_relu_mask_missing"].values())
    assert set(notebook.autograded_ids(source_nb)) <= set(rows[0])


def test_students_start_longest_first_by_their_last_grading_and_new_ones_before_them():
    records = {"quick": batch.Record("quick", "", seconds=20.0), "slow": batch.Record("slow", "", seconds=70.0),
               "medium": batch.Record("medium", "", seconds=45.0), "new": None}
    todo = [(name, "sha") for name in ("quick", "new", "medium", "slow")]
    assert [name for name, _ in batch.longest_first(todo, records)] == ["new", "slow", "medium", "quick"]


def own_threads():
    """Run in a batch worker process: the threads its own torch and numpy use."""
    import torch
    from nncourse import kernel_env
    openblas = [get() for get, _ in kernel_env.openblas_libraries()]
    return torch.get_num_threads(), os.environ.get("OPENBLAS_NUM_THREADS"), openblas


def imported(name):
    import sys
    return name in sys.modules


@pytest.mark.parametrize("threads", [1, 2])
def test_local_worker_processes_get_the_kernels_thread_cap_for_their_own_verdicts(threads):
    """torch, imported later, reads the cap; numpy's OpenBLAS was loaded before the worker's start
    ran (with the module that holds it), so it is capped where it is."""
    runner = batch.Runner(2, threads=threads)
    try:
        task = runner.submit(own_threads)
        assert task.result() == (threads, str(threads), [threads])
    finally:
        runner.close()


IDLE_VERDICTS = """
import os, sys, torch
from nncourse import kernel_env, verdicts
early = verdicts.EarlyVerdicts([], {}, idle=True)
early.cell_starts(0)  # the kernel runs a long cell: the thread becomes idle
thread = early.idle.result(timeout=120)
blas = kernel_env.openblas_libraries()[0][0]
during = (os.sched_getscheduler(thread) == os.SCHED_IDLE, blas())
early.decided(None)
print(during, (torch.get_num_threads(), blas()))
"""


def test_idle_verdicts_take_idle_cpu_time_and_leave_the_graders_threads_as_they_were():
    """While the kernel has every core, the verdicts' thread is SCHED_IDLE and numpy's BLAS (global to
    the process) has one thread; afterwards the grader's own torch and BLAS threads are as before."""
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: there is nothing to give back")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", IDLE_VERDICTS], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[0] == f"(True, 1) ({cores}, {cores})"


def test_idle_verdicts_that_cannot_be_set_up_wait_for_the_kernel(monkeypatch):
    """Where the idle scheduling fails, no verdict runs beside the kernel (each is left for after it),
    the grader never waits for the verdicts' thread between cells, and grading goes on."""
    import nbformat
    from nncourse import kernel_env, verdicts
    monkeypatch.setattr(kernel_env, "become_idle", lambda: 1 / 0)
    decided_beside = []

    class EveryCellATest(verdicts.DecideVerdicts):
        def assignment(self, resources):
            return verdicts, "any"

        def warm_up(self, resources):
            pass

        def test_of(self, cell, assignment):
            return cell.cell_type == "code"

        def verdict(self, nb, index, resources, reports):
            decided_beside.append(index)
            return verdicts.Verdict(1.0)

    step = EveryCellATest()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x = {i}") for i in range(2)])
    early = verdicts.EarlyVerdicts([step], {}, idle=True)
    early.cell_starts(0)
    early.cell_done(nb, 0)  # before the thread has tried to become idle
    assert not early.idle.done()
    early.cell_starts(1)  # a long cell
    assert early.idle.result(timeout=120) is None
    early.cell_done(nb, 1)
    assert early.decided(step) == {} and decided_beside == []


def test_local_worker_processes_start_at_once_and_import_what_grading_needs():
    """The pool's processes start with the runner, not with the first tasks, and import the named
    modules (the grader and the assignment's checks) before any task arrives."""
    import multiprocessing
    before = len(multiprocessing.active_children())
    runner = batch.Runner(2, modules=["wave"])  # a module nothing else here imports
    try:
        assert len(multiprocessing.active_children()) - before == 2
        assert runner.submit(imported, name="wave").result()
        assert not runner.submit(imported, name="tabnanny").result()
    finally:
        runner.close()


def kernel_templates():
    """Run in a batch worker process: its kernel templates, and whether each is running."""
    from nncourse.template import KernelTemplate
    return [template.process.poll() is None for template in KernelTemplate.running.values()]


@pytest.mark.skipif(os.geteuid() != 0, reason="kernels are forked from a template only when grading as root")
def test_local_worker_processes_start_their_kernel_template_before_any_task():
    """With fork_server, each worker process starts its kernel template as it starts, so that the
    template imports torch while the driver prepares the first submissions."""
    from conftest import DATA_DIR
    settings = {"SandboxedKernelManager": {"fork_server": True, "data_variable": "MNIST_DIR", "data_dir": str(DATA_DIR)}}
    for given, expected in ((settings, [True]), (None, [])):
        runner = batch.Runner(2, settings=given)
        try:
            assert runner.submit(kernel_templates).result() == expected
        finally:
            runner.close()


def test_reading_a_notebook_does_not_compile_an_iri_grammar_in_every_grading_process():
    """./setup removes rfc3987-syntax (2.6 s at each import of nbformat, for a format nothing here checks)."""
    import subprocess
    import sys
    probe = subprocess.run([sys.executable, "-c", "import sys, nbformat.validator, jsonschema; "
                            "print(sorted(m for m in sys.modules if m.startswith('rfc3987_syntax')))"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]", probe.stdout


EXIT_PROBE = """
import atexit, os, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from nncourse.__main__ import exit_without_teardown
atexit.register(print, "atexit handler ran")
threading.Thread(target=lambda: (time.sleep(0.5), print("thread finished"))).start()
ThreadPoolExecutor(1).submit(int).result()  # an idle pool, never shut down: its thread waits for work
real_exit = os._exit
os._exit = lambda code: (print("os._exit", code), sys.stdout.flush(), real_exit(code))
print("unfinished line ", end="")
exit_without_teardown(3)
"""


def test_the_command_line_ends_as_sys_exit_would_but_without_the_interpreters_teardown():
    """`python -m nncourse` waits for its threads (an idle thread pool left open is told to stop, as
    at any exit), runs its atexit handlers, flushes its output and keeps its exit code, then ends at
    once (os._exit) instead of tearing down torch and every module; a command that fails still says
    why, with its own exit code."""
    result = subprocess.run([sys.executable, "-c", EXIT_PROBE], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (result.returncode, result.stdout) == (3, "unfinished line thread finished\natexit handler ran\nos._exit 3\n")
    result = subprocess.run([sys.executable, "-m", "nncourse", "--course", "/nonexistent", "scores"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "error: /nonexistent is not a course folder" in result.stderr
