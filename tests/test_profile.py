"""The grading profile: in grading runs, the locked training cells evaluate the test set less often."""
import copy
import os
from pathlib import Path

import pytest
from traitlets.config import Config

from nncourse import notebook
from nncourse.assignments.tutorial3 import checks
from nncourse.profile import CHUNKS_HELPER, GradingProfile, set_keyword

from conftest import DATA_DIR, RELEASE, SOURCE

RESOURCES = {"nbgrader": {"assignment": "tutorial3"}}
ASSIGNMENTS = {"tutorial3": checks.__name__}


def profiled(nb, test_every):
    config = Config({"AssignmentStep": {"assignments": ASSIGNMENTS}, "GradingProfile": {"test_every": test_every}})
    return GradingProfile(config=config).preprocess(copy.deepcopy(nb), RESOURCES)[0]


def training_sources(nb):
    return {g: c.source for g, c in notebook.cells_by_id(nb).items() if g in checks.TRAINING_CELLS}


def test_keyword_literal_is_replaced_in_place():
    source = "run(net,\n    batch=40,\n    every=10)  # keep\n"
    assert set_keyword(source, "every", 100) == ("run(net,\n    batch=40,\n    every=100)  # keep\n", 10)


@pytest.mark.parametrize("source", ["run(every=n)", "run(x)", "run(every=1)\nrun(every=2)"])
def test_keyword_that_is_not_one_integer_literal_is_refused(source):
    with pytest.raises(ValueError, match="expected one `every=<integer>`"):
        set_keyword(source, "every", 100)


def test_profile_changes_only_the_training_cells_and_says_so_in_each():
    nb = notebook.read(RELEASE)
    out = profiled(nb, 100)
    before, after = training_sources(nb), training_sources(out)
    assert len(after) == 4
    for grade_id, source in after.items():
        assert "iters_per_test=10)" in before[grade_id]
        assert source.splitlines()[0].startswith("# Grading run: the test set was evaluated every 100 iterations")
        assert source.split("\n", 1)[1] == before[grade_id].replace("iters_per_test=10)", "iters_per_test=100)")
    others = [c.source for c in out.cells if notebook.meta(c).get("grade_id") not in checks.TRAINING_CELLS]
    assert others == [c.source for c in nb.cells if notebook.meta(c).get("grade_id") not in checks.TRAINING_CELLS]


def test_profile_off_leaves_the_notebook_alone():
    nb = notebook.read(SOURCE)
    assert profiled(nb, 0) == nb


def test_a_training_cell_the_profile_cannot_change_stops_grading_with_the_fix():
    nb = notebook.read(SOURCE)
    notebook.cells_by_id(nb)["task3_train"].source = "train_everything()"
    with pytest.raises(ValueError, match="'task3_train' cannot be changed.*test_every = 0"):
        profiled(nb, 100)


def test_the_course_grades_with_the_profile():
    from nncourse import batch
    from nncourse.course import Course
    from conftest import REPO
    config = Course.load(REPO).config
    assert GradingProfile in batch.autograde_steps(config, "sanitize_preprocessors")
    assert config.GradingProfile.test_every == 100


# ------------------------------------------------------------------------------ evaluations in chunks
def chunked(nb, rows):
    config = Config({"AssignmentStep": {"assignments": ASSIGNMENTS}, "GradingProfile": {"chunk_rows": rows}})
    return GradingProfile(config=config).preprocess(copy.deepcopy(nb), RESOURCES)[0]


def test_the_training_loop_predicts_the_test_set_in_chunks_and_says_so():
    nb = notebook.read(RELEASE)
    before = notebook.cells_by_id(nb)["gradient_descent"].source
    after = notebook.cells_by_id(chunked(nb, 1000))["gradient_descent"].source
    assert "y_pred_test = net.forward_pass(test_imgs)\n" in before
    assert after.startswith("# Grading run: y_pred_test computed 1000 rows at a time")
    assert "            y_pred_test = _in_chunks(net.forward_pass, test_imgs, 1000)\n" in after
    assert after.endswith(before.replace("y_pred_test = net.forward_pass(test_imgs)",
                                         "y_pred_test = _in_chunks(net.forward_pass, test_imgs, 1000)"))
    assert chunked(nb, 0) == nb


def test_predictions_in_chunks_are_the_whole_sets_numpy_or_torch():
    """The call on all rows, for a numpy and a torch model (up to float rounding: BLAS sums a
    chunk's products in another order); torch's result is detached."""
    import numpy as np
    import torch
    namespace = {}
    exec(CHUNKS_HELPER, namespace)
    chunk = namespace["_in_chunks"]
    rows = np.random.RandomState(0).normal(size=(10, 4)).astype(np.float32)
    w = np.random.RandomState(1).normal(size=(4, 3)).astype(np.float32)
    calls = []
    numpy_model = lambda x: calls.append(len(x)) or np.tanh(x @ w)  # noqa: E731
    assert np.allclose(chunk(numpy_model, rows, 3), numpy_model(rows), rtol=1e-6, atol=1e-6)
    assert calls == [3, 3, 3, 1, 10]
    tw = torch.tensor(w, requires_grad=True)
    torch_model = lambda x: torch.relu(torch.tensor(x) @ tw)  # noqa: E731
    got = chunk(torch_model, rows, 3)
    assert not got.requires_grad and torch.allclose(got, torch_model(rows).detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("statement, in_cell, error", [
    ("y_pred_test = f(test_imgs, 1)", True, "is not `name = function"),
    ("y_pred_test = net.predict(test_imgs)", False, "found it 0 times")])
def test_a_call_the_profile_cannot_chunk_stops_grading_with_the_fix(statement, in_cell, error, monkeypatch):
    monkeypatch.setattr(checks, "IN_CHUNKS", {"gradient_descent": [statement]})
    nb = notebook.read(SOURCE)
    if in_cell:
        cell = notebook.cells_by_id(nb)["gradient_descent"]
        cell.source = cell.source.replace("y_pred_test = net.forward_pass(test_imgs)", statement)
    with pytest.raises(ValueError, match=f"'gradient_descent' cannot be changed.*{error}.*chunk_rows = 0"):
        chunked(nb, 1000)


# ------------------------------------------------------------------------------ prepared data
PREPARED_CONFIG = {"AssignmentStep": {"assignments": ASSIGNMENTS}, "GradingProfile": {"prepared_data": True},
                   "SandboxedKernelManager": {"data_variable": "MNIST_DIR"}}


def run_cells(nb, upto, monkeypatch, data_dir=DATA_DIR):
    """The notebook's code cells up to grade_id `upto`, run in this process (magics left out),
    with $MNIST_DIR = `data_dir`: their global names."""
    import matplotlib
    matplotlib.use("Agg")
    monkeypatch.setenv("MNIST_DIR", str(data_dir))
    namespace = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            exec("\n".join(line for line in cell.source.splitlines() if not line.startswith("%")), namespace)
            if notebook.meta(cell).get("grade_id") == upto:
                return namespace
    raise AssertionError(f"no cell {upto}")


@pytest.fixture(scope="module")
def prepared_nb():
    return GradingProfile(config=Config(PREPARED_CONFIG)).preprocess(copy.deepcopy(notebook.read(SOURCE)), RESOURCES)[0]


def test_prepared_cells_read_the_graders_copy_and_say_so(prepared_nb):
    cell = notebook.cells_by_id(prepared_nb)["preprocess_normalize"]
    assert cell.source.startswith("# Grading run: train_imgs, test_imgs are read from the grader's copy")
    assert "train_imgs = _graders_copy(\"train_imgs\", lambda: normalize_int_whole_database(train_imgs))" in cell.source
    folder = prepared_nb.metadata.nncourse["prepared"]["folder"]
    assert folder.startswith(".prepared/") and prepared_nb.metadata.nncourse["prepared"]["module"] == checks.__name__
    untouched = [g for g in notebook.cells_by_id(prepared_nb) if g != "preprocess_normalize"]
    source = notebook.cells_by_id(notebook.read(SOURCE))
    assert all(notebook.cells_by_id(prepared_nb)[g].source == source[g].source for g in untouched)


def test_the_graders_copy_holds_exactly_what_the_notebook_computes(prepared_nb, tmp_path, monkeypatch):
    """Bit for bit: the source notebook's own cells, run here, against the copy the grader prepares."""
    import numpy as np
    from nncourse.profile import ensure_prepared
    (tmp_path / "MNIST").symlink_to(DATA_DIR / "MNIST")
    folder = ensure_prepared(prepared_nb, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["test_imgs.npy", "train_imgs.npy"]
    own = run_cells(notebook.read(SOURCE), "preprocess_normalize", monkeypatch)
    for name in ("train_imgs", "test_imgs"):
        copy_ = np.load(folder / f"{name}.npy")
        assert copy_.dtype == own[name].dtype and np.array_equal(copy_, own[name]), name
    # the profiled cell reads that copy, as a plain writable array whose changes stay in the kernel
    graded = run_cells(prepared_nb, "preprocess_normalize", monkeypatch, tmp_path)
    assert isinstance(graded["train_imgs"].base, np.memmap) and type(graded["train_imgs"]) is np.ndarray
    assert np.array_equal(graded["train_imgs"], own["train_imgs"])
    graded["train_imgs"][0] = 0
    assert np.array_equal(np.load(folder / "train_imgs.npy", mmap_mode="r")[0], own["train_imgs"][0])


def test_the_graders_own_accuracies_read_that_copy_too(prepared_nb, tmp_path):
    """The checks' test set (checks.mnist) is mapped from the copy where the machine has one, and
    computed where it has none: the same values either way."""
    import numpy as np
    from nncourse.profile import ensure_prepared
    (tmp_path / "MNIST").symlink_to(DATA_DIR / "MNIST")
    computed, labels = checks.mnist.__wrapped__(str(tmp_path), False)  # no copy yet
    folder = ensure_prepared(prepared_nb, tmp_path)
    mapped, mapped_labels = checks.mnist.__wrapped__(str(tmp_path), False)
    assert not isinstance(computed, np.memmap) and isinstance(mapped, np.memmap)
    assert Path(mapped.filename) == folder / "test_imgs.npy" and not mapped.flags.writeable
    assert np.array_equal(mapped, computed) and np.array_equal(mapped_labels, labels)


def test_without_the_graders_copy_the_profiled_cell_computes_the_arrays_itself(prepared_nb, tmp_path, monkeypatch):
    import numpy as np
    (tmp_path / "MNIST").symlink_to(DATA_DIR / "MNIST")  # the data, and no copy
    graded = run_cells(prepared_nb, "preprocess_normalize", monkeypatch, tmp_path)
    assert not isinstance(graded["train_imgs"].base, np.memmap)
    assert graded["train_imgs"].dtype == np.float64 and abs(graded["train_imgs"].mean()) < 1e-9


def test_a_data_folder_the_grader_cannot_write_leaves_the_cells_computing(prepared_nb, tmp_path):
    from nncourse.profile import ensure_prepared
    (tmp_path / "MNIST").symlink_to(DATA_DIR / "MNIST")
    (tmp_path / ".prepared").write_text("")  # not a folder: nothing can be written there (even by root)
    said = []
    assert ensure_prepared(prepared_nb, tmp_path, log=said.append) is None
    assert said and "the notebook computes it itself" in said[0]


def test_the_graders_copy_is_readable_by_the_kernels_whatever_the_graders_umask(prepared_nb, tmp_path):
    """Kernels run under uids of their own: a grader with umask 077 still leaves its copy readable."""
    from nncourse.profile import ensure_prepared
    (tmp_path / "MNIST").symlink_to(DATA_DIR / "MNIST")
    was = os.umask(0o077)
    try:
        folder = ensure_prepared(prepared_nb, tmp_path)
    finally:
        os.umask(was)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [folder.parent, folder, *folder.iterdir()]}
    assert modes == {".prepared": 0o755, folder.name: 0o755, "test_imgs.npy": 0o644, "train_imgs.npy": 0o644}
