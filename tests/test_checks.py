"""The reference and the checks, without a kernel: the probes run here on Python namespaces that
stand for a student's notebook, and their reports go through the same encoding, size cap and
schema as in grading."""
import base64
import copy
import io
import json
import os
import subprocess
import sys
import weakref

import nbformat
import numpy as np
import pytest
import torch
from traitlets.config import Config

from nncourse import verdicts
from nncourse.assignments.tutorial3 import checks, probes
from nncourse.assignments.tutorial3 import reference as ref

from conftest import DATA_DIR, RELEASE, REPO

CHECKS = "nncourse.assignments.tutorial3.checks"
CORRECT = {"get_random_batch": ref.random_batch, "MLP_Numpy": ref.MLP_Numpy, "MLP_Torch": ref.MLP_Torch,
           "MLP_Torch_Autograd": ref.MLP_Torch_Autograd, "CNN_Torch_Autograd": ref.CNN_Torch_Autograd,
           "cross_entropy_numpy": ref.cross_entropy_numpy, "cross_entropy_torch": ref.cross_entropy_torch,
           "grad_descent_update_numpy": ref.update_numpy, "grad_descent_update_torch": ref.update_torch,
           "grad_descent_update_autograd": ref.update_autograd}


class NoRetrain(checks.Context):
    """A context whose sandboxed retraining is not expected in these tests."""

    def retrain(self, *args, **kwargs):
        raise AssertionError(f"unexpected sandboxed retraining {args}")


@pytest.fixture(scope="module")
def context():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(metadata={"nbgrader": {"grade_id": f"task{i}_train"}})
                                         for i in range(2, 6)])
    config = Config({"SandboxedKernelManager": {"data_dir": str(DATA_DIR)}})
    return NoRetrain({}, nb, verdicts.DecideVerdicts(config=config))


def verdict(test, ns, context):
    """The verdict on what the kernel would report for `test` with the notebook namespace `ns`."""
    fields = probes.probe(test, ns, checks.inputs())
    data = {"test": test, "npz": verdicts.encode_arrays(fields)}
    cell = nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "display_data", data={verdicts.REPORT_MIME: data})])
    report = verdicts.cell_reports(cell, test, 16 * verdicts.MIB)
    return verdicts.judge(checks.CHECKS[test], report, context)


def student(**changes):
    return dict(CORRECT, **changes)


@pytest.fixture(scope="module")
def training_set():
    return checks.mnist(str(DATA_DIR), True)


def train_one_thread(model, training_set, sampler=ref.random_batch):
    """The reference trained with one thread (float32 sums in another order can move MLP_Torch
    by one test image), so that the stated figures reproduce exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ref.train(model, *training_set, sampler=sampler)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(training_set):
    return {model: train_one_thread(model, training_set) for model in ref.STATED}


@pytest.mark.parametrize("model", list(ref.STATED))
def test_reference_reproduces_the_stated_figures(context, trained, model):
    got = context.test_accuracy(model, [ref.as_numpy(p) for p in trained[model].params])
    assert round(got, 2) == ref.STATED[model]["random"]


def test_a_worker_predicts_the_test_set_once_for_parameters_equal_to_the_last_bit(context, monkeypatch):
    """Equal parameters are predicted once per process; a change in any value, or dtype, anew."""
    calls, predict = [], ref.predict
    monkeypatch.setattr(ref, "predict", lambda *args: calls.append(args[0]) or predict(*args))
    monkeypatch.setattr(checks, "KNOWN_ACCURACIES", verdicts.Memo())
    params = [ref.as_numpy(p) for p in ref.init_params("MLP_Torch")[0]]
    first = context.test_accuracy("MLP_Torch", params)
    predicted = len(calls)
    assert predicted == 20  # the test set, 500 images at a time
    assert context.test_accuracy("MLP_Torch", [p.copy() for p in params]) == first
    assert len(calls) == predicted
    changed = [p.copy() for p in params]
    changed[0].flat[0] += 1e-3
    context.test_accuracy("MLP_Torch", changed)
    context.test_accuracy("MLP_Torch", [p.astype(np.float64) for p in params])
    assert len(calls) == 3 * predicted


@pytest.mark.parametrize("model", list(ref.STATED))
def test_predicting_the_test_set_in_chunks_gives_the_same_probabilities(trained, model):
    images, _ = checks.mnist(str(DATA_DIR), False)
    params = [ref.as_numpy(p) for p in trained[model].params]
    whole = ref.predict(model, params, images)
    chunked = np.concatenate([ref.predict(model, params, images[i:i + 500]) for i in range(0, len(images), 500)])
    assert np.array_equal(whole.argmax(axis=1), chunked.argmax(axis=1))  # what the accuracy counts
    assert np.allclose(whole, chunked, rtol=1e-5, atol=1e-7)  # rounding only (BLAS threads split differently)


@pytest.mark.parametrize("model", [m for m in ref.STATED if m != "MLP_Numpy"])
def test_an_accuracy_estimated_without_torch_moves_only_near_ties(trained, model):
    """numpy's float32 arithmetic gives torch's probabilities but for rounding, and so the same class
    but where the top two are nearly tied: far fewer images than ESTIMATE_MARGIN stands for."""
    images, _ = checks.mnist(str(DATA_DIR), False)
    params = [ref.as_numpy(p) for p in trained[model].params]
    exact, estimate = (ref.predict(model, params, images, estimate) for estimate in (False, True))
    assert np.allclose(exact, estimate, rtol=1e-4, atol=1e-6)
    moved = np.flatnonzero(exact.argmax(axis=1) != estimate.argmax(axis=1))
    assert len(moved) / len(images) * 100 < ref.ESTIMATE_MARGIN / 2
    top_two = np.sort(exact[moved], axis=1)[:, -2:]
    assert np.all(top_two[:, 1] - top_two[:, 0] < 1e-5)


@pytest.mark.parametrize("offset, torch_asked, score", [(0.1, False, 1.0), (0.28, True, 1.0), (0.32, True, 0.0)])
def test_torch_decides_an_accuracy_near_the_edge_of_the_tolerance(context, trained, monkeypatch, offset, torch_asked,
                                                                   score):
    """The estimate decides alone when it is clearly within the tolerance; within ESTIMATE_MARGIN of
    its edge, or beyond it, torch's own figure decides, and is the one a failure message gives."""
    model, test = "MLP_Torch", "task3_mlp_torch_accuracy"
    exact = context.test_accuracy(model, [ref.as_numpy(p) for p in trained[model].params])
    monkeypatch.setitem(ref.STATED[model], "random", round(exact + offset, 2))
    monkeypatch.setattr(checks, "KNOWN_ACCURACIES", verdicts.Memo())
    asked, predict = [], ref.predict
    monkeypatch.setattr(ref, "predict", lambda *args: asked.append(args[3]) or predict(*args))
    got = verdict(test, student(net=trained[model]), context)
    assert got.score == score and (False in asked) == torch_asked and True in asked, (got, set(asked))
    assert score == 1 or f"is {exact:.2f}%" in got.message


@pytest.mark.parametrize("model", ["MLP_Numpy", "CNN_Torch_Autograd"])
def test_reference_reproduces_the_stated_figures_with_the_constant_batch(context, training_set, model):
    net = train_one_thread(model, training_set, ref.constant_batch)
    assert round(context.test_accuracy(model, [ref.as_numpy(p) for p in net.params]), 2) == \
        ref.STATED[model]["constant"]


@pytest.mark.parametrize("test", sorted(set(checks.CHECKS) - set(checks.ACCURACY_TESTS)))
def test_every_check_passes_the_reference(context, test):
    assert verdict(test, CORRECT, context) == verdicts.Verdict(1.0)


@pytest.mark.parametrize("test, model", sorted(checks.ACCURACY_TESTS.items()))
def test_trained_reference_earns_the_accuracy_points_without_retraining(context, trained, test, model):
    ns = student(net=trained[model])
    assert verdict(test, ns, context) == verdicts.Verdict(1.0)


# ------------------------------------------------------------------ the sample students' bugs
def relu_mask_missing():
    class MLP_Numpy(ref.MLP_Numpy):
        def backward_pass(self, loss, y_real):
            x, h1, h1_relu, h1_ext, h2, y_pred = self._MLP_Numpy__activations
            w1, w2 = self.params
            grad_logits = (y_pred - y_real) / y_pred.shape[0]
            grad_h1 = grad_logits.dot(w2.transpose())[:, :-1].copy()
            grad_h1[h1_relu < 0] = 0
            return [x.transpose().dot(grad_h1), h1_ext.transpose().dot(grad_logits)]
    return MLP_Numpy


def cnn_forgets_bias():
    class CNN_Torch_Autograd(ref.CNN_Torch_Autograd):
        def forward_pass(self, batch_imgs):
            w1, b1, w2, b2 = self.params
            h1 = torch.nn.functional.conv2d(torch.tensor(batch_imgs, dtype=torch.float), w1)
            pooled = torch.nn.functional.max_pool2d(h1.clamp(min=0), 2, 2, ceil_mode=True)
            logits = pooled.reshape([pooled.shape[0], -1]).mm(w2) + b2
            return torch.softmax(logits, dim=1)
    return CNN_Torch_Autograd


def no_requires_grad():
    class MLP_Torch_Autograd(ref.MLP_Torch_Autograd):
        requires_grad = False
    return MLP_Torch_Autograd


def no_zeroing(params, grads, learning_rate):
    for i in range(len(params)):
        params[i].data -= learning_rate * grads[i].data


BUGS = [
    ("task1_random_batch_correct", dict(get_random_batch=ref.constant_batch), "still the first samples"),
    ("task1_random_batch_changes", dict(get_random_batch=ref.constant_batch), "two calls returned the same batch"),
    ("task1_random_batch_correct", dict(get_random_batch=lambda imgs, lbls, n, rng: ref.random_batch(
        imgs, lbls, n, np.random.RandomState(0))), "not drawn from the rng passed"),
    ("task1_random_batch_correct", dict(get_random_batch=lambda imgs, lbls, n, rng: [
        imgs[rng.randint(0, len(imgs), n)], lbls[rng.randint(0, len(imgs), n)]]), "labels returned do not belong"),
    ("task2_mlp_numpy_backward_correct", dict(MLP_Numpy=relu_mask_missing()), "grad_w1 is wrong"),
    ("task2_cross_entropy_numpy_correct", dict(cross_entropy_numpy=lambda y, r, eps=1e-7: np.mean(
        -np.mean(r * np.log(y + eps), axis=1))), "the loss is wrong"),
    ("task2_update_numpy_correct", dict(grad_descent_update_numpy=lambda p, g, learning_rate: [
        p.__setitem__(i, p[i] + learning_rate * g[i]) for i in range(len(p))]), "params[0] after one update"),
    ("task3_cross_entropy_torch_correct", dict(cross_entropy_torch=lambda y, r, eps=1e-7: torch.mean(
        -torch.mean(torch.as_tensor(r, dtype=torch.float) * torch.log(torch.as_tensor(y, dtype=torch.float) + eps),
                    dim=1))), "the loss is wrong"),
    ("task4_update_autograd_correct", dict(grad_descent_update_autograd=no_zeroing), "gradient of params[0] is not zero"),
    ("task4_mlp_autograd_init_correct", dict(MLP_Torch_Autograd=no_requires_grad()), "requires_grad is False"),
    ("task4_mlp_autograd_sane", dict(MLP_Torch_Autograd=no_requires_grad()), "requires_grad=True"),
    ("task5_cnn_forward_correct", dict(CNN_Torch_Autograd=cnn_forgets_bias()), "forward_pass output"),
    ("task3_update_torch_correct", dict(grad_descent_update_torch=lambda p, g, learning_rate: [
        p.__setitem__(i, p[i] - learning_rate * g[i]) for i in range(len(p))]), "replaced params[0] with a new tensor"),
    ("task2_mlp_numpy_forward_correct", dict(MLP_Numpy=None), "MLP_Numpy is not defined"),
]


@pytest.mark.parametrize("test, changes, message", BUGS, ids=[f"{t}-{m[:20]}" for t, _, m in BUGS])
def test_each_bug_fails_its_check_with_a_message_that_names_it(context, test, changes, message):
    got = verdict(test, student(**changes), context)
    assert got.score == 0 and message in got.message, got


def test_messages_do_not_give_the_expected_values(context):
    got = verdict("task2_mlp_numpy_backward_correct", student(MLP_Numpy=relu_mask_missing()), context)
    want = checks.backward_truth()[0]
    assert "expected" not in got.message
    assert not any(f"{v:.4g}" in got.message for v in want.ravel()[np.abs(want.ravel()) > 1e-3][:200])


def test_a_sampler_without_replacement_passes_task1(context):
    def without_replacement(imgs, lbls, batch_size, rng):
        indices = rng.choice(imgs.shape[0], size=batch_size, replace=False)
        return [imgs[indices], lbls[indices]]
    for test in ("task1_random_batch_correct", "task1_random_batch_changes"):
        assert verdict(test, student(get_random_batch=without_replacement), context).score == 1


def test_a_different_sampler_is_judged_against_the_reference_trained_with_its_batches(context, training_set):
    def without_replacement(imgs, lbls, batch_size, rng):
        indices = rng.choice(imgs.shape[0], size=batch_size, replace=False)
        return [imgs[indices], lbls[indices]]
    ns = student(get_random_batch=without_replacement,
                 net=ref.train("MLP_Torch", *training_set, sampler=without_replacement))
    assert verdict("task3_mlp_torch_accuracy", ns, context).score == 1


def test_a_model_from_another_task_does_not_count(context, trained):
    ns = student(net=trained["MLP_Torch"])
    got = verdict("task4_mlp_autograd_accuracy", ns, context)
    assert got.score == 0 and "did not produce a trained MLP_Torch_Autograd" in got.message


# ------------------------------------------------------------------ reports that cannot be trusted
def report_output(test, npz_b64):
    return nbformat.v4.new_output("display_data", data={verdicts.REPORT_MIME: {"test": test, "npz": npz_b64}})


def npz(**arrays):
    return verdicts.encode_arrays(arrays)


def pickled_npz(marker):
    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    buffer = io.BytesIO()
    np.savez(buffer, y=np.array([Boom()], dtype=object))
    return base64.b64encode(buffer.getvalue()).decode()


FORWARD = "task2_mlp_numpy_forward_correct"


@pytest.mark.parametrize("outputs, message", [
    ([], "no result was reported"),
    ([report_output(FORWARD, npz(y=np.zeros((6, 10))))] * 2, "more than one result"),
    ([report_output(FORWARD, npz(y=np.zeros((6, 10))))], "forward_pass output (class probabilities) is wrong"),
    ([report_output(FORWARD, npz(y=np.full((6, 10), np.nan)))], "NaN"),
    ([report_output(FORWARD, npz(y=np.zeros((6, 10), dtype=np.complex64)))], "malformed"),
    ([report_output(FORWARD, npz(y=np.zeros(5), extra=np.zeros(1)))], "malformed"),
    ([report_output(FORWARD, "not base64 at all!")], "unusable"),
    ([report_output(FORWARD, npz(y=np.zeros((1200, 1000))))], "larger than 8 MiB"),
    ([report_output("task2_mlp_numpy_sane", npz(y=np.full((5, 10), 0.1)))], "no result was reported"),
    ([report_output(FORWARD, npz(other=np.zeros(3)))], "malformed"),
], ids=["missing", "duplicated", "right-shape-wrong-values", "nan", "wrong-dtype", "extra-field", "garbage",
        "oversized", "other-test", "missing-field"])
def test_untrustworthy_reports_fail_that_test_with_a_clear_message(context, outputs, message):
    cell = nbformat.v4.new_code_cell(outputs=outputs)
    got = verdicts.judge(checks.CHECKS[FORWARD], verdicts.cell_reports(cell, FORWARD, 8 * verdicts.MIB), context)
    assert got.score == 0 and message in got.message, got


def test_a_pickled_report_is_never_unpickled(context, tmp_path):
    marker = tmp_path / "unpickled"
    cell = nbformat.v4.new_code_cell(outputs=[report_output(FORWARD, pickled_npz(marker))])
    got = verdicts.judge(checks.CHECKS[FORWARD], verdicts.cell_reports(cell, FORWARD, 8 * verdicts.MIB), context)
    assert got.score == 0 and "unusable" in got.message
    assert not marker.exists()
    np.load(io.BytesIO(base64.b64decode(pickled_npz(marker))), allow_pickle=True)["y"]
    assert marker.exists(), "the payload is live: unpickling it runs it"


# ------------------------------------------------------------------ what reaches the kernel
def test_the_kernel_gets_no_reference_and_no_expected_values():
    cell = verdicts.kernel_cell(verdicts.load_assignment(CHECKS))
    reference_lines = {line.strip() for line in open(ref.__file__).read().splitlines() if len(line.strip()) > 25}
    probe_lines = set(open(checks.PROBES_FILE).read().splitlines())
    leaked = [line for line in reference_lines - {l.strip() for l in probe_lines} if line in cell]
    assert not leaked, leaked[:3]
    assert "ACCURACY_TOLERANCE" not in cell and "STATED" not in cell
    for figures in ref.STATED.values():
        assert not any(str(v) in cell for v in figures.values())


class InProcessRetrain(checks.Context):
    """Retrains in this process instead of a sandboxed kernel, and records what was asked."""

    def __init__(self, ns, training_set, *args):
        super().__init__(*args)
        self.ns, self.training_set, self.asked = ns, training_set, []

    def retrain(self, test, model_name, student_model):
        self.asked.append((test, student_model))
        model = ref.MODELS[model_name]
        if student_model:
            net = ref.train(model_name, *self.training_set, cls=self.ns[model_name])
        else:
            net = ref.train(model_name, *self.training_set, sampler=self.ns["get_random_batch"],
                            loss=self.ns[model.loss], update=self.ns[model.update])
        return [ref.as_numpy(p) for p in net.params]


def ascent(params, grads, learning_rate):
    for i in range(len(params)):
        params[i] = params[i] + learning_rate * grads[i]


def crashes(params, grads, learning_rate):
    raise IndexError("list index out of range")


@pytest.mark.parametrize("update, retrained_as", [(ascent, False), (crashes, True)], ids=["wrong", "crashes"])
def test_a_wrong_or_crashing_helper_changes_which_model_is_retrained(context, training_set, update, retrained_as):
    """A wrong update: the reference is trained with it. A crashing one: the student's model is
    trained with correct helpers. Either way the model's own accuracy points are kept."""
    net = ref.MLP_Numpy(np.random.RandomState(0))  # the training cell crashed: untrained
    if update is ascent:
        net = ref.train("MLP_Numpy", *training_set, update=ascent)
    ns = student(grad_descent_update_numpy=update, net=net)
    recording = InProcessRetrain(ns, training_set, {}, context.nb, context.step)
    assert verdict("task2_mlp_numpy_accuracy", ns, recording).score == 1
    assert recording.asked == [("task2_mlp_numpy_accuracy", retrained_as)]


def half_step(params, grads, learning_rate):
    for i in range(len(params)):
        params[i].data = params[i].data - learning_rate / 2 * grads[i].data


@pytest.mark.parametrize("retrained_far", [False, True], ids=["within", "far"])
def test_the_accuracy_a_model_reaches_with_the_students_helpers_is_estimated_first(context, training_set, trained,
                                                                                  monkeypatch, retrained_far):
    """A wrong helper: the reference retrained with it (once) gives the expected figure, estimated
    without torch as the student's own is. Torch computes both only when they are not clearly
    within the tolerance (`far`: the retraining stands for one far from the student's), and its
    figure is the one the message gives."""
    from nncourse.assignments.tutorial3 import retrain as retraining
    model, test = "MLP_Torch", "task3_mlp_torch_accuracy"
    ns = student(grad_descent_update_torch=half_step, net=ref.train(model, *training_set, update=half_step))
    students = [ref.as_numpy(p) for p in ns["net"].params]
    retrained = [ref.as_numpy(p) for p in trained[model].params] if retrained_far else students
    retrainings = []
    monkeypatch.setattr(retraining, "retrain", lambda nb, step, *args: retrainings.append(args) or retrained)
    monkeypatch.setattr(checks, "KNOWN_ACCURACIES", verdicts.Memo())
    asked, predict = set(), ref.predict
    monkeypatch.setattr(ref, "predict", lambda *args: asked.add((args[3], verdicts.arrays_key(args[1]))) or
                        predict(*args))
    got = verdict(test, ns, checks.Context({}, context.nb, context.step))
    assert retrainings == [(test, model, False)]
    if not retrained_far:  # the same model: clearly within, and no figure from torch
        assert got.score == 1 and asked == {(True, verdicts.arrays_key(students))}
    else:
        exact = context.test_accuracy(model, students)
        assert got.score == 0 and f"is {exact:.2f}%" in got.message
        assert asked == {(e, verdicts.arrays_key(p)) for e in (True, False) for p in (students, retrained)}


def test_a_missing_model_is_not_retrained(context):
    """Without a model class there is nothing to train with correct helpers: the test fails at once."""
    ns = student(MLP_Numpy=None, grad_descent_update_numpy=None)
    init = verdicts.Report(fields=probes.probe("task2_mlp_numpy_init_correct", ns, checks.inputs()))
    recording = NoRetrain({"task2_mlp_numpy_init_correct": init}, context.nb, context.step)
    got = verdict("task2_mlp_numpy_accuracy", ns, recording)
    assert got.score == 0 and "MLP_Numpy is not defined" in got.message


def test_retraining_runs_only_what_was_defined_when_the_model_trained():
    """A Bonus after Task 5 that redefines a helper plays no part when Task 4's model is retrained."""
    from nncourse import notebook
    from nncourse.assignments.tutorial3.retrain import retrain_notebook
    from nncourse.assignments.tutorial3.samples import BONUS_CELL, BY_NAME
    from conftest import RELEASE
    nb = BY_NAME["style_bonus_cnn"].notebook(notebook.read(RELEASE))
    sources = [c.source for c in retrain_notebook(nb, "MLP_Torch_Autograd", student_model=False).cells[:-1]]
    assert any("def grad_descent_update_autograd" in s for s in sources)  # Task 4's helpers are there
    assert not any("class CNN_Torch_Autograd" in s for s in sources)  # Task 5 came later
    assert BONUS_CELL not in sources
    cnn = [c.source for c in retrain_notebook(nb, "CNN_Torch_Autograd", student_model=False).cells[:-1]]
    assert any("class CNN_Torch_Autograd" in s for s in cnn) and BONUS_CELL not in cnn


def write_package(folder, value):
    (folder / "stale_pkg").mkdir(parents=True, exist_ok=True)
    (folder / "stale_pkg" / "__init__.py").write_text("")
    (folder / "stale_pkg" / "reference.py").write_text(f"VALUE = {value}\n")
    (folder / "stale_pkg" / "checks.py").write_text("from .reference import VALUE\n")


@pytest.fixture
def fresh_imports(monkeypatch):
    """sys.path and sys.modules as they were, afterwards; the loader's memory of its own."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # a cached .pyc must not hide a change either
    monkeypatch.setattr(verdicts, "IMPORTED_CHECKS", {})
    before = set(sys.modules)
    yield monkeypatch
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_checks_are_imported_again_when_their_files_or_folder_changed(tmp_path, fresh_imports):
    """A process that has imported the checks judges with the files as they are now, wherever the path finds them."""
    fresh_imports.syspath_prepend(str(tmp_path / "first"))
    write_package(tmp_path / "first", 1)
    loaded = verdicts.load_assignment("stale_pkg.checks")
    assert loaded.VALUE == 1
    assert verdicts.load_assignment("stale_pkg.checks") is loaded  # unchanged: not imported again
    write_package(tmp_path / "first", 2)  # the reference changes, next to the checks
    assert verdicts.load_assignment("stale_pkg.checks").VALUE == 2
    write_package(tmp_path / "second", 3)  # another course's package of the same name, first on the path
    fresh_imports.syspath_prepend(str(tmp_path / "second"))
    assert verdicts.load_assignment("stale_pkg.checks").VALUE == 3
    package = tmp_path / "second" / "stale_pkg"
    assert verdicts.checks_digest("stale_pkg.checks") == verdicts.files_digest(package, sorted(package.glob("*.py")))


def test_an_edited_file_in_a_subpackage_of_the_checks_has_them_imported_again(tmp_path, fresh_imports):
    """The checks' package includes its subpackages: an edited table in one is judged with, not the old one."""
    fresh_imports.syspath_prepend(str(tmp_path))
    write_package(tmp_path, 1)
    tables = tmp_path / "stale_pkg" / "tables"
    tables.mkdir()
    (tables / "__init__.py").write_text("")
    (tables / "limits.py").write_text("LIMIT = 10\n")
    (tmp_path / "stale_pkg" / "checks.py").write_text("from .tables.limits import LIMIT\n")
    assert verdicts.load_assignment("stale_pkg.checks").LIMIT == 10
    digest = verdicts.checks_digest("stale_pkg.checks")
    (tables / "limits.py").write_text("LIMIT = 20\n")
    assert verdicts.checks_digest("stale_pkg.checks") != digest  # so the grading key changes too
    assert verdicts.load_assignment("stale_pkg.checks").LIMIT == 20
    assert sys.modules["stale_pkg.tables.limits"].LIMIT == 20


def test_editor_leftovers_in_the_checks_package_are_not_part_of_the_checks(tmp_path, fresh_imports):
    """Jupyter's checkpoints, an editor's lock file or a copy beside the checks change neither the grading key nor the checks."""
    fresh_imports.syspath_prepend(str(tmp_path))
    write_package(tmp_path, 1)
    package = tmp_path / "stale_pkg"
    digest = verdicts.checks_digest("stale_pkg.checks")
    loaded = verdicts.load_assignment("stale_pkg.checks")
    (package / ".ipynb_checkpoints").mkdir()
    (package / ".ipynb_checkpoints" / "checks-checkpoint.py").write_text("VALUE = 99\n")
    (package / "checks (copy).py").write_text("VALUE = 98\n")
    (package / ".#checks.py").symlink_to("root@host.1234")  # emacs's lock: a link to nowhere
    assert verdicts.checks_digest("stale_pkg.checks") == digest  # no one is regraded for them
    assert verdicts.load_assignment("stale_pkg.checks") is loaded
    assert verdicts.checks_files("stale_pkg.checks")[1] == [package / n for n in ("__init__.py", "checks.py", "reference.py")]


def test_a_checks_file_outside_a_package_of_its_own_is_reloaded_alone(tmp_path, fresh_imports):
    """A top-level checks file: only its own file counts and is reloaded; a neighbour on the path is not
    touched. Checks inside nncourse's package never make the grader forget its own modules."""
    fresh_imports.syspath_prepend(str(tmp_path))
    (tmp_path / "single_checks.py").write_text("from neighbour import N\nVALUE = 1\n")
    (tmp_path / "neighbour.py").write_text("N = 1\n")
    first = verdicts.load_assignment("single_checks")
    neighbour, digest = sys.modules["neighbour"], verdicts.checks_digest("single_checks")
    (tmp_path / "neighbour.py").write_text("N = 2\n")
    assert verdicts.checks_digest("single_checks") == digest
    assert verdicts.load_assignment("single_checks") is first
    (tmp_path / "single_checks.py").write_text("from neighbour import N\nVALUE = 2\n")
    assert verdicts.load_assignment("single_checks").VALUE == 2
    assert sys.modules["neighbour"] is neighbour
    assert verdicts.own_package("nncourse.mychecks") is None
    assert verdicts.own_package("nncourse.assignments.tutorial3.checks") == "nncourse.assignments.tutorial3"


def test_one_notebook_keeps_the_checks_it_started_with(tmp_path, fresh_imports):
    """Checks edited while a notebook is graded: its later steps still judge with the first version."""
    fresh_imports.syspath_prepend(str(tmp_path))
    write_package(tmp_path, 1)
    step = verdicts.AssignmentStep(assignments={"a": "stale_pkg.checks"})
    resources = {"nbgrader": {"assignment": "a"}}
    assert step.assignment(resources)[0].VALUE == 1
    write_package(tmp_path, 2)
    copied = copy.deepcopy(resources)  # as nbconvert does
    assert step.assignment(resources)[0].VALUE == step.assignment(copied)[0].VALUE == 1
    assert step.assignment({"nbgrader": {"assignment": "a"}})[0].VALUE == 2  # the next notebook


def write_inputs_package(folder, value):
    package = folder / "cached_pkg"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "probes.py").write_text("# the probes\n")
    (package / "checks.py").write_text(
        "from pathlib import Path\nimport numpy as np\nPROBES_FILE = Path(__file__).with_name('probes.py')\n"
        f"COMPUTED = []\ndef inputs():\n    COMPUTED.append(1)\n    return {{'value': np.array({value})}}\n")


def test_the_set_up_cell_is_kept_on_disk_until_what_makes_it_changes(tmp_path, fresh_imports):
    """Computing the set-up cell's inputs may need slow imports: a grader process that finds the cell
    on disk does not compute them. An edited checks file makes a new cell, which replaces the old one."""
    fresh_imports.syspath_prepend(str(tmp_path))
    fresh_imports.setattr(verdicts, "CACHE", tmp_path / "cache")
    write_inputs_package(tmp_path, 1)
    first_checks = verdicts.load_assignment("cached_pkg.checks")
    first = verdicts.kernel_cell(first_checks)
    assert first_checks.COMPUTED == [1] and len(list((tmp_path / "cache").iterdir())) == 1
    fresh_imports.setattr(verdicts, "KERNEL_CELLS", weakref.WeakKeyDictionary())  # as in a new process
    assert verdicts.kernel_cell(first_checks) == first and first_checks.COMPUTED == [1]  # read, not computed
    write_inputs_package(tmp_path, 2)
    checks = verdicts.load_assignment("cached_pkg.checks")
    assert checks is not first_checks and verdicts.kernel_cell(checks) != first and checks.COMPUTED == [1]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == \
        [f"set-up-cell-cached_pkg.checks-{verdicts.fixed_inputs_key(checks)}"]


GRADER_WITHOUT_TORCH = """
import json, sys
import nbformat
from traitlets.config import Config
from nncourse import batch, notebook, verdicts
from nncourse.verdicts import InsertProbes
config = Config({"AssignmentStep": {"assignments": {"tutorial3": "nncourse.assignments.tutorial3.checks"}},
                 "SandboxedKernelManager": {"data_dir": sys.argv[3]}})
nb, _ = InsertProbes(config=config).preprocess(notebook.read(sys.argv[1]), {"nbgrader": {"assignment": "tutorial3"}})
batch.grading_environment("tutorial3", config)
setup = [c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "grader_setup"]
print(len(setup), "torch" in sys.modules)
from nncourse.assignments.tutorial3 import checks
step = verdicts.DecideVerdicts(config=config)
trained = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(metadata={"nbgrader": {"grade_id": f"task{i}_train"}})
                                           for i in range(2, 6)])  # the training cells ran without an error
context = checks.Context({}, trained, step)
scores = set()
for test, npz in json.load(open(sys.argv[2])).items():
    cell = nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "display_data", data={verdicts.REPORT_MIME: {"test": test, "npz": npz}})])
    got = verdicts.judge(checks.CHECKS[test], verdicts.cell_reports(cell, test, 16 * verdicts.MIB), context)
    scores.add(got.score) if got.score == 1 else print(test, got)
print(sorted(scores), "torch" in sys.modules)
"""


def test_a_grader_with_its_answers_on_disk_decides_a_correct_notebook_without_torch(tmp_path, trained):
    """The driver prepares the notebook (the set-up cell, the environment it checks workers against)
    without torch: the inputs are numpy's. Deciding every verdict of a correct notebook needs torch's
    answers on the fixed inputs once; a grader that finds them on disk imports no torch at all, so it
    takes no CPU from a kernel that uses every core (the test accuracies are estimated by numpy)."""
    reports = {test: verdicts.encode_arrays(probes.probe(test, student(net=trained[checks.ACCURACY_TESTS[test]])
                                                         if test in checks.ACCURACY_TESTS else CORRECT, checks.inputs()))
               for test in checks.CHECKS}
    (tmp_path / "reports.json").write_text(json.dumps(reports))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    runs = [subprocess.run([sys.executable, "-c", GRADER_WITHOUT_TORCH, str(RELEASE), str(tmp_path / "reports.json"),
                            str(DATA_DIR)], capture_output=True, text=True, env=env, timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr[-2000:]
    first, second = (r.stdout.splitlines() for r in runs)
    assert first == ["1 False", "[1.0] True"]  # every check passes; torch computed the answers...
    assert second == ["1 False", "[1.0] False"]  # ...which the next grader reads
    assert sorted(p.name.split("-nncourse")[0] for p in (tmp_path / "cache" / "nncourse").iterdir()) == \
        ["set-up-cell", "torch-answers"]


IDLE_VERDICTS_THREAD = """
import os, sys, time
import nbformat
from nncourse import kernel_env
from nncourse.verdicts import EarlyVerdicts, LazyModule
sys.path.insert(0, sys.argv[1])  # slow_module.py: records its importing thread's scheduling policy
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1") for _ in range(3)])
early = EarlyVerdicts([], {}, idle=True)  # as for a kernel with every core
early.cell_starts(0)
time.sleep(0.2)  # a short cell
early.cell_done(nb, 0)
time.sleep(0.5)  # between cells
print(early.idle.done())
early.cell_starts(1)  # a long cell
early.idle.result(timeout=120)
slow = LazyModule("slow_module")
print(early.pool.submit(lambda: (kernel_env.is_idle(), slow.POLICY == os.SCHED_OTHER, kernel_env.is_idle())).result())
print("torch" in sys.modules)
sys.stdout.flush()
os._exit(0)
"""


def test_an_idle_verdicts_thread_starts_during_a_long_cell_and_imports_at_normal_priority(tmp_path):
    """When the kernel has every core, the verdicts' thread becomes idle only once a cell has run
    0.25 s, not while the grader is sending short cells. A module it imports lazily is imported at
    normal priority (an idle thread holding the interpreter's lock while descheduled would stall the
    grader), and the thread is idle again after. It imports no torch of its own accord."""
    (tmp_path / "slow_module.py").write_text("import os\nPOLICY = os.sched_getscheduler(0)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-c", IDLE_VERDICTS_THREAD, str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == ["False", "(True, True, True)", "False"], run.stdout
