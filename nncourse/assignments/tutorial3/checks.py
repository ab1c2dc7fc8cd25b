"""Tutorial 3's checks: each test cell's verdict, decided in the grader's process from the plain
arrays that probes.py reports from the student's kernel (see nncourse/verdicts.py).

Messages say what is wrong, never the answer. Expected figures for the final accuracies:
- the stated figure when the student's helpers agree with the reference on the grader's inputs
  (the sampler draws the reference's indices or the seed's constant batch);
- otherwise the reference trained with the student's batch indices (here, in this process), or,
  when the loss, update or inherited forward pass differ, with the student's helpers in a
  sandboxed kernel (retrain.py): that student already lost those helpers' points;
- if a helper crashes, the student's model trained with correct helpers (also sandboxed).
"""
import inspect
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import data
from nncourse.profile import prepared_array
from nncourse.sandbox import configured_data_dir
from nncourse.verdicts import Check, Failed, LazyModule, Memo, cached_arrays, not_beside_the_kernel
from . import reference as ref

torch = LazyModule("torch")  # imported at its first use: the driver starts the kernel sooner

PROBES_FILE = Path(__file__).with_name("probes.py")
SETUP_CELL = "grader_setup"
PACKAGES = ("numpy", "torch", "torchvision")  # a worker with other versions refuses to grade (batch.py)
# Cells that train a model: left out when the grader retrains with the student's helpers.
TRAINING_CELLS = {"task2_train", "task3_train", "task4_train", "task5_train"}
TEST_EVERY_ARGUMENT = "iters_per_test"  # how often they evaluate the test set (grading profile)
# Arrays that locked cells compute from MNIST alone: in grading runs they read the grader's copy
# (prepare, below), computed once per machine (grading profile).
PREPARED = {"preprocess_normalize": ["train_imgs = normalize_int_whole_database(train_imgs)",
                                     "test_imgs = normalize_int_whole_database(test_imgs)"]}
# The whole test set's predictions in the training loop: in grading runs, in chunks (grading profile).
IN_CHUNKS = {"gradient_descent": ["y_pred_test = net.forward_pass(test_imgs)"]}
ACCURACY_TESTS = {"task2_mlp_numpy_accuracy": "MLP_Numpy", "task3_mlp_torch_accuracy": "MLP_Torch",
                  "task4_mlp_autograd_accuracy": "MLP_Torch_Autograd", "task5_cnn_accuracy": "CNN_Torch_Autograd"}
INIT_TESTS = {"MLP_Numpy": "task2_mlp_numpy_init_correct", "MLP_Torch": "task3_mlp_torch_init_correct",
              "MLP_Torch_Autograd": "task4_mlp_autograd_init_correct", "CNN_Torch_Autograd": "task5_cnn_init_correct"}
SAMPLER_CASES = [(60000, 40, 3, 25), (100, 7, 4, 1), (50, 50, 5, 1)]  # size, batch, rng seed, draws


# ------------------------------------------------------------------------------ inputs
def fixed(seed):
    return np.random.RandomState(1000 + seed)


def small_mlp_params(seed, hidden=7):
    rng = fixed(seed)
    return [rng.normal(0, 0.05, size=(785, hidden)), rng.normal(0, 0.5, size=(hidden + 1, 10))]


def probabilities(seed, n=5):
    p = fixed(seed).uniform(0.01, 1, size=(n, 10))
    return p / p.sum(axis=1, keepdims=True)


def onehot_rows(seed, n=5):
    return np.eye(10)[fixed(seed).randint(0, 10, size=n)]


def cnn_params(seed=4):
    rng = fixed(seed)
    return [rng.normal(0, 0.3, (10, 1, 5, 5)), rng.normal(0, 0.5, (10,)), rng.normal(0, 0.1, (1440, 10)),
            rng.normal(0, 0.5, (10,))]


@lru_cache(maxsize=1)
def inputs():
    """Every input the probes use, chosen here (the kernel gets them as data)."""
    out = {"sampler_cases": np.array(SAMPLER_CASES), "batch": np.array(ref.BATCH),
           "iterations": np.array(ref.ITERS), "seed": np.array(ref.SEED),
           "sane_flat": fixed(20).normal(size=(5, 784)), "sane_cnn": fixed(21).normal(size=(5, 1, 28, 28))}
    for model in ref.MODELS:
        _, rng = ref.init_params(model)
        _, keys, pos, _, _ = rng.get_state()
        out[f"rng_after_init_{model}"], out[f"rng_pos_{model}"] = keys, np.array(pos)
    for kind, params, images in [("numpy", small_mlp_params(1), fixed(22).normal(size=(6, 784))),
                                 ("torch", small_mlp_params(5), fixed(23).normal(size=(6, 784))),
                                 ("cnn", cnn_params(), fixed(24).normal(size=(6, 1, 28, 28)))]:
        out[f"forward_{kind}_count"] = np.array(len(params))
        out.update({f"forward_{kind}_w{i}": p for i, p in enumerate(params)})
        out[f"forward_{kind}_images"] = images
    w1, w2 = small_mlp_params(2)
    net = ref.MLP_Numpy.__new__(ref.MLP_Numpy)
    net.params = [w1, w2]
    net.forward_pass(fixed(25).normal(size=(6, 784)))
    out.update(backward_w1=w1, backward_w2=w2, backward_y_real=onehot_rows(26, 6),
               **{f"backward_act{i}": a for i, a in enumerate(net._MLP_Numpy__activations)})
    a1, a2 = small_mlp_params(3)
    out.update(autograd_w1=a1, autograd_w2=a2, autograd_c1=fixed(27).normal(size=a1.shape),
               autograd_c2=fixed(28).normal(size=a2.shape))
    out["loss_cases"] = np.array(3)
    for case in range(3):
        out[f"loss_pred{case}"], out[f"loss_real{case}"] = probabilities(case), onehot_rows(case)
    rng = fixed(1)
    out.update(update_p0=rng.normal(size=(4, 3)), update_p1=rng.normal(size=(3,)),
               update_g0=rng.normal(size=(4, 3)), update_g1=rng.normal(size=(3,)), update_lr=np.array(0.1))
    return out


def torch_answers():
    """The reference's answers, by torch, on the fixed inputs of the checks about torch code."""
    x = inputs()
    out = {}
    for kind, model in (("torch", ref.MLP_Torch), ("cnn", ref.CNN_Torch_Autograd)):
        net = model.__new__(model)
        net.params = [torch.tensor(x[f"forward_{kind}_w{i}"], dtype=torch.float)
                      for i in range(int(x[f"forward_{kind}_count"]))]
        with torch.no_grad():
            out[f"forward_{kind}"] = net.forward_pass(x[f"forward_{kind}_images"]).numpy()
    w = [torch.tensor(x[f"backward_{n}"], requires_grad=True) for n in ("w1", "w2")]  # autograd in float64
    ones = torch.ones((6, 1), dtype=torch.float64)
    h1 = torch.tensor(x["backward_act0"]).mm(w[0])
    y_pred = torch.softmax(torch.cat((h1.clamp(min=0), ones), dim=1).mm(w[1]), dim=1)
    (-(torch.tensor(x["backward_y_real"]) * torch.log(y_pred)).sum(dim=1).mean()).backward()
    out["backward_w1"], out["backward_w2"] = (g.grad.numpy() for g in w)
    for case in range(int(x["loss_cases"])):
        y_pred = torch.tensor(x[f"loss_pred{case}"], dtype=torch.float, requires_grad=True)
        loss = ref.cross_entropy_torch(y_pred, x[f"loss_real{case}"])
        loss.backward()
        out[f"loss{case}"], out[f"loss_grad{case}"] = loss.detach().numpy(), y_pred.grad.numpy()
    params = [torch.tensor(x[f"update_p{i}"], dtype=torch.float) for i in range(2)]
    ref.update_torch(params, [torch.tensor(x[f"update_g{i}"], dtype=torch.float) for i in range(2)],
                     float(x["update_lr"]))
    out.update({f"update_torch_p{i}": p.numpy() for i, p in enumerate(params)})
    return out


@lru_cache(maxsize=1)
def answers():
    """torch_answers(), kept on disk with the set-up cell: the grader decides the verdicts of correct
    torch code without importing torch (docs/grading.md)."""
    return cached_arrays(sys.modules[__name__], "torch-answers", torch_answers)


# ------------------------------------------------------------------------------ comparing
def check(condition, message):
    if not condition:
        raise Failed(message)


def compare(what, got, want, rtol, atol):
    """Fail, saying where and how much, if `got` is not close to `want` (without showing `want`)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    check(got.shape == want.shape, f"{what} has shape {got.shape}, expected {want.shape}.")
    check(np.all(np.isfinite(got)), f"{what} contains NaN or infinite values.")
    wrong = ~np.isclose(got, want, rtol=rtol, atol=atol)
    check(not wrong.any() or got.size > 1, f"{what} is wrong.")
    if wrong.any():
        worst = np.unravel_index(np.argmax(np.abs(got - want)), got.shape)
        raise Failed(f"{what} is wrong: {int(wrong.sum())} of {got.size} values differ from the correct ones "
                     f"(the largest difference is at index {tuple(int(i) for i in worst)}).")


def agrees(fn, *args):
    """True if the check `fn(*args)` passes."""
    try:
        fn(*args)
        return True
    except Failed:
        return False


def params_of(report):
    return [report[f"param{i}"] for i in range(int(report["count"]))]


# ------------------------------------------------------------------------------ Task 1
def sampler_batches(report, case, size, batch_size, draws):
    imgs, lbls = report[f"imgs{case}"], report[f"lbls{case}"]
    check(imgs.shape == (draws, batch_size, 1),
          f"asked for a batch of {batch_size} samples, got images of shape {imgs.shape[1:2]}.")
    check(np.array_equal(imgs, lbls), "the labels returned do not belong to the images returned.")
    return imgs[..., 0]


def check_batch_changes(report, context):
    imgs, lbls = report["imgs"], report["lbls"]
    check(imgs.shape == (2, 40, 1), f"asked for a batch of 40, got images of shape {imgs.shape[1:2]}.")
    check(np.array_equal(imgs, lbls), "the labels returned do not belong to the images returned.")
    check(not np.array_equal(imgs[0], imgs[1]),
          "two calls returned the same batch: sample a random batch on every call (Task 1).")


def check_batch_correct(report, context):
    for case, (size, batch_size, seed, draws) in enumerate(SAMPLER_CASES):
        got = sampler_batches(report, case, size, batch_size, draws)
        check(got.min() >= 0 and got.max() < size,
              f"indices must be within 0..{size - 1} for {size} samples; found {got.min()}..{got.max()}.")
        check(not any(np.array_equal(b, np.arange(batch_size)) for b in got),
              "the batch is still the first samples of the training set: draw random indices.")
        check(int(report[f"next{case}"]) != np.random.RandomState(seed).randint(1 << 30),
              "the indices were not drawn from the rng passed to get_random_batch: use it, so that "
              "training is reproducible.")
        if draws > 1:
            check(got.min() < size // 10 and got.max() >= size - size // 10,
                  "the batches do not spread over the whole training set: draw indices from all samples.")
            check(len({tuple(b) for b in got}) == draws, "some calls returned the same batch: draw a new "
                                                         "random batch on every call.")


# ------------------------------------------------------------------------------ models
def check_params_kind(report, count, torch_params, requires_grad):
    check(int(report["count"]) == count, f"params should be a list of {count} parameters.")
    for i in range(count):
        kind = "torch tensor" if torch_params else "numpy array"
        check(bool(report[f"param{i}_tensor"]) == torch_params, f"params[{i}] should be a {kind}.")
        if torch_params:
            check(bool(report[f"param{i}_float32"]), f"params[{i}] should be float32 (dtype=torch.float).")
            check(bool(report[f"param{i}_requires_grad"]) == requires_grad,
                  f"params[{i}].requires_grad is {not requires_grad}, expected {requires_grad}.")


def probabilities_check(y, n=5):
    check(y.shape == (n, 10), f"forward_pass on {n} images should return shape ({n}, 10), got {y.shape}.")
    check(np.all(np.isfinite(y)) and np.all(y >= 0) and np.allclose(y.sum(axis=1), 1, atol=1e-4),
          "each row of y_pred should be probabilities summing to 1.")


def sane(count, torch_params, requires_grad=None):
    def judge(report, context):
        if requires_grad is not None:
            check(int(report["count"]) == count and all(bool(report[f"param{i}_tensor"]) and
                                                        bool(report[f"param{i}_requires_grad"]) == requires_grad
                                                        for i in range(int(report["count"]))),
                  "every parameter should be a tensor created with requires_grad=True.")
        probabilities_check(report["y"])
    return judge


def init(model_name, torch_params, requires_grad):
    def judge(report, context):
        want, _ = ref.init_params(model_name)
        check_params_kind(report, len(want), torch_params, requires_grad)
        for i, w in enumerate(want):
            w = ref.as_numpy(w)
            shape = tuple(int(s) for s in report[f"param{i}_shape"])
            check(shape == w.shape, f"params[{i}] has shape {shape}, expected {w.shape}.")
            sample = w.ravel()[::max(1, w.size // 4096)][:4096]
            compare(f"the initial value of params[{i}] (drawn from rng, N(0, 0.01))", report[f"param{i}"],
                    sample, 1e-6, 1e-9)
    return judge


def reference_forward(kind):
    if kind != "numpy":
        return answers()[f"forward_{kind}"]
    x = inputs()
    net = ref.MLP_Numpy.__new__(ref.MLP_Numpy)
    net.params = [x[f"forward_numpy_w{i}"] for i in range(int(x["forward_numpy_count"]))]
    return net.forward_pass(x["forward_numpy_images"])


def forward(kind, rtol):
    def judge(report, context):
        compare("forward_pass output (class probabilities)", report["y"], reference_forward(kind), rtol, 1e-7)
    return judge


def backward_truth():
    """Gradients of the mean cross-entropy at the backward inputs, by autograd in float64."""
    return [answers()["backward_w1"], answers()["backward_w2"]]


def manual_backward(tol):
    def judge(report, context):
        grad_w1, grad_w2 = backward_truth()
        compare("grad_w2", report["grad_w2"], grad_w2, tol, 1e-7)
        compare("grad_w1", report["grad_w1"], grad_w1, tol, 1e-7)
    return judge


def check_autograd_backward(report, context):
    x = inputs()
    for i in range(2):
        compare(f"gradient {i}", report[f"grad{i}"], 2 * x[f"autograd_c{i + 1}"] * x[f"autograd_w{i + 1}"], 1e-4, 1e-6)


# ------------------------------------------------------------------------------ losses and updates
def check_loss_sane_numpy(report, context):
    check(abs(float(report["confident"])) < 0.01, "a confident, correct prediction should have a loss near 0.")
    check(np.isclose(float(report["uniform"]), np.log(10), rtol=1e-4),
          "a uniform prediction over 10 classes should have loss log(10) = 2.3026.")


def check_loss_sane_torch(report, context):
    check(bool(report["is_tensor"]), "cross_entropy_torch should return a torch tensor.")
    check(report["uniform"].size == 1 and abs(float(report["uniform"].ravel()[0]) - np.log(10)) < 1e-4,
          "a uniform prediction over 10 classes should have loss log(10) = 2.3026.")


def check_loss_numpy(report, context):
    x = inputs()
    for case in range(3):
        got = report[f"loss{case}"]
        check(got.ndim == 0, f"the loss should be a single number (mean over samples); got an array of shape "
                             f"{got.shape}.")
        compare("the loss", got, ref.cross_entropy_numpy(x[f"loss_pred{case}"], x[f"loss_real{case}"]), 1e-9, 1e-12)


def reference_loss_torch(case):
    return answers()[f"loss{case}"], answers()[f"loss_grad{case}"]


def check_loss_torch(report, context):
    for case in range(3):
        check(bool(report[f"is_tensor{case}"]) and report[f"loss{case}"].ndim == 0,
              "cross_entropy_torch should return a single-number torch tensor (mean over samples).")
        check(bool(report[f"connected{case}"]), "the loss is not connected to y_pred: compute it with torch "
                                                "operations so that autograd can differentiate it.")
        want_loss, want_grad = reference_loss_torch(case)
        compare("the loss", report[f"loss{case}"], want_loss, 1e-5, 1e-7)
        compare("the gradient of the loss", report[f"grad{case}"], want_grad, 1e-4, 1e-6)
    check(bool(report["numpy_in_tensor_out"]), "cross_entropy_torch should also accept numpy arrays (as the "
                                               "given conversion lines do) and return a tensor.")


def update(name, kind):
    def judge(report, context):
        x = inputs()
        values, grads = [x["update_p0"], x["update_p1"]], [x["update_g0"], x["update_g1"]]
        if kind == "numpy":
            want = list(values)
            ref.update_numpy(want, grads, learning_rate=float(x["update_lr"]))
        else:
            want = [answers()["update_torch_p0"], answers()["update_torch_p1"]]
        check(int(report["count"]) == 2, f"{name} changed the number of parameters in the list.")
        for i in range(2):
            if kind != "numpy":
                check(bool(report[f"same{i}"]), f"{name} replaced params[{i}] with a new tensor: update its .data "
                                                f"instead, so the model sees the change.")
            compare(f"params[{i}] after one update with learning_rate=0.1", report[f"p{i}"], want[i], 1e-5, 1e-6)
        if kind == "autograd":
            for i in range(2):
                check(np.all(report[f"grad{i}"] == 0), f"after the update, the gradient of params[{i}] is not "
                                                       f"zero: autograd would add the next iteration's gradient to it.")
    return judge


# ------------------------------------------------------------------------------ final accuracy
def sub_report(report, part):
    """The fields of one part of an accuracy report (e.g. loss_*), or None if it failed."""
    if f"{part}_error" in report:
        return None
    prefix = f"{part}_"
    return {k[len(prefix):]: v for k, v in report.items() if k.startswith(prefix)}


@lru_cache(maxsize=None)
def reference_indices(model):
    return ref.batch_indices(ref.random_batch, model)


def sampler_kind(indices, model):
    if indices.shape == (ref.ITERS, ref.BATCH) and np.array_equal(indices, reference_indices(model)):
        return "random"
    if all(np.array_equal(row, np.arange(ref.BATCH)) for row in indices):
        return "constant"
    return "other"


LOSS_CHECK = {"cross_entropy_numpy": check_loss_numpy, "cross_entropy_torch": check_loss_torch}


def accuracy(test):
    model_name = ACCURACY_TESTS[test]
    model = ref.MODELS[model_name]

    def judge(report, context):
        parts = {p: sub_report(report, p) for p in ("loss", "update", "forward")}
        parts["indices"] = None if "indices_error" in report else report["indices"]
        crashed = [p for p in ("indices", "loss", "update") if parts[p] is None] + \
            (["forward"] if model.parent and parts["forward"] is None else [])
        if crashed:
            what = f"{model_name} trained with correct helper functions"
            init = context.reports.get(INIT_TESTS[model_name])
            if init is not None and (init.fields is None or "error" in init.fields):  # no model to retrain
                raise Failed(init.problem if init.fields is None else str(init.fields["error"]))
            params = context.retrain(test, model_name, student_model=True)
            expected = lambda estimate: ref.STATED[model_name]["random"]
        else:
            check(str(report["model"]) == model_name and "params_error" not in report
                  and not context.cell_failed(f"task{test[4]}_train"),
                  f"the training cell above did not produce a trained {model_name} (it stopped with an error): "
                  f"fix that error first.")
            what, params = f"{model_name} after the training above", params_of(report)
            expected = lambda estimate: expected_accuracy(test, model, parts, context, estimate)
        got, want = context.test_accuracy(model_name, params, estimate=True), expected(True)
        if abs(got - want) > ref.ACCURACY_TOLERANCE - 2 * ref.ESTIMATE_MARGIN:  # not clearly within: torch's figures
            got, want = context.test_accuracy(model_name, params), expected(False)
        check(abs(got - want) <= ref.ACCURACY_TOLERANCE,
              f"final test accuracy of {what} is {got:.2f}%, which is not within {ref.ACCURACY_TOLERANCE} points "
              f"of the accuracy a correct model reaches with the same helper functions.")
    return judge


def expected_accuracy(test, model, parts, context, estimate):
    """The accuracy a correct model reaches with the student's helpers. `estimate`: the figure of a
    model retrained with them may be estimated (see test_accuracy); the others are exact."""
    indices = parts["indices"]
    kind = sampler_kind(indices, model.name)
    helpers_agree = agrees(update(model.update, model.update.rsplit("_", 1)[1]), parts["update"], None)
    if model.autograd:  # the loss's gradient drives training only with autograd
        helpers_agree &= agrees(LOSS_CHECK[model.loss], parts["loss"], None)
    if model.parent:
        helpers_agree &= agrees(forward("torch", 1e-4), parts["forward"], None)
    if helpers_agree and kind != "other":
        return ref.STATED[model.name][kind]
    if helpers_agree:  # trained here, with torch for a torch model: its exact figure costs no more
        return context.reference_accuracy(model.name, indices)
    return context.test_accuracy(model.name, context.retrain(test, model.name, student_model=False), estimate)


# ------------------------------------------------------------------------------ stand-ins
def stand_in(obj, *needs):
    source = "\n".join(["import numpy as np", "import torch", "from torch.nn import functional as F", ""]
                       + [inspect.getsource(x) for x in (*needs, obj)])
    return {"source": source, "object": obj.__name__}


STAND_INS = {
    "task1_random_batch_correct": {"get_random_batch": stand_in(ref.random_batch)},
    # the seed imports torch in MLP_Torch's cell: a syntax error there must not cost the loss's tests
    "task3_mlp_torch_backward_correct": {"torch": {"source": "import torch", "object": "torch"}},
    "task3_mlp_torch_accuracy": {"MLP_Torch": stand_in(ref.MLP_Torch, ref.mlp_init),
                                 "cross_entropy_torch": stand_in(ref.cross_entropy_torch)},
    "task4_mlp_autograd_accuracy": {"grad_descent_update_autograd": stand_in(ref.update_autograd)},
}

FLAGS = {r"param\d+_(tensor|float32|requires_grad)": ("b", ()), r"param\d+_shape": "i", "count": ("i", ())}
ACCURACY_FIELDS = {"model": ("U", ()), r"param\d+": "f", **FLAGS, "indices": "i", r"(params|indices|loss|update|forward)_error":
                   ("U", ()), r"(loss|update)_\w+": "bfi", "forward_y": "f"}
CHECKS = {
    "task1_random_batch_changes": Check(check_batch_changes, {"imgs": "i", "lbls": "i"}),
    "task1_random_batch_correct": Check(check_batch_correct, {r"(imgs|lbls)\d": "i", r"next\d": ("i", ())}),
    "task2_mlp_numpy_sane": Check(sane(2, False), {"y": "f", **FLAGS}),
    "task2_mlp_numpy_init_correct": Check(init("MLP_Numpy", False, False), {r"param\d+": "f", **FLAGS}),
    "task2_mlp_numpy_forward_correct": Check(forward("numpy", 1e-7), {"y": "f"}),
    "task2_mlp_numpy_backward_correct": Check(manual_backward(1e-7), {"grad_w1": "f", "grad_w2": "f"}),
    "task2_cross_entropy_numpy_sane": Check(check_loss_sane_numpy, {"uniform": "f", "confident": "f",
                                                                    "is_tensor": ("b", ())}),
    "task2_cross_entropy_numpy_correct": Check(check_loss_numpy, {r"loss\d": "f"}),
    "task2_update_numpy_correct": Check(update("grad_descent_update_numpy", "numpy"),
                                        {"count": ("i", ()), r"p\d": "f", r"same\d": ("b", ())}),
    "task2_mlp_numpy_accuracy": Check(accuracy("task2_mlp_numpy_accuracy"), ACCURACY_FIELDS),
    "task3_mlp_torch_sane": Check(sane(2, True), {"y": "f", **FLAGS}),
    "task3_mlp_torch_init_correct": Check(init("MLP_Torch", True, False), {r"param\d+": "f", **FLAGS}),
    "task3_mlp_torch_forward_correct": Check(forward("torch", 1e-4), {"y": "f"}),
    "task3_mlp_torch_backward_correct": Check(manual_backward(1e-4), {"grad_w1": "f", "grad_w2": "f"}),
    "task3_cross_entropy_torch_sane": Check(check_loss_sane_torch, {"uniform": "f", "is_tensor": ("b", ())}),
    "task3_cross_entropy_torch_correct": Check(check_loss_torch, {r"loss\d": "f", r"grad\d": "f",
                                                                  r"(is_tensor|connected)\d": ("b", ()),
                                                                  "numpy_in_tensor_out": ("b", ())}),
    "task3_update_torch_correct": Check(update("grad_descent_update_torch", "torch"),
                                        {"count": ("i", ()), r"p\d": "f", r"same\d": ("b", ())}),
    "task3_mlp_torch_accuracy": Check(accuracy("task3_mlp_torch_accuracy"), ACCURACY_FIELDS),
    "task4_mlp_autograd_sane": Check(sane(2, True, requires_grad=True), {"y": "f", **FLAGS}),
    "task4_mlp_autograd_init_correct": Check(init("MLP_Torch_Autograd", True, True), {r"param\d+": "f", **FLAGS}),
    "task4_mlp_autograd_backward_correct": Check(check_autograd_backward, {r"grad\d": "f"}),
    "task4_update_autograd_correct": Check(update("grad_descent_update_autograd", "autograd"),
                                           {"count": ("i", ()), r"p\d": "f", r"same\d": ("b", ()), r"grad\d": "f"}),
    "task4_mlp_autograd_accuracy": Check(accuracy("task4_mlp_autograd_accuracy"), ACCURACY_FIELDS),
    "task5_cnn_sane": Check(sane(4, True), {"y": "f", **FLAGS}),
    "task5_cnn_init_correct": Check(init("CNN_Torch_Autograd", True, True), {r"param\d+": "f", **FLAGS}),
    "task5_cnn_forward_correct": Check(forward("cnn", 1e-4), {"y": "f"}),
    "task5_cnn_accuracy": Check(accuracy("task5_cnn_accuracy"), ACCURACY_FIELDS),
}


# ------------------------------------------------------------------------------ context
def prepare(data_dir):
    """PREPARED's arrays, as the notebook computes them (tests/test_profile.py checks they are equal)."""
    return {f"{split}_imgs": ref.normalize(data.load_split(Path(data_dir), split == "train")[0])
            for split in ("train", "test")}


@lru_cache(maxsize=2)
def mnist(data_dir, train):
    """(normalised images, labels): the normalised images read from the grader's copy of PREPARED's
    arrays where this machine has one (prepare computes them the same way), else computed."""
    images, labels = data.load_split(Path(data_dir), train)
    normalized = prepared_array(data_dir, __name__, "train_imgs" if train else "test_imgs")
    return ref.normalize(images) if normalized is None else normalized, labels.astype(np.int64)


def data_dir(step):
    """The grader's copy of MNIST: the folder the kernels are shown."""
    return configured_data_dir(step.config) or str(Path.cwd() / "data" / "mnist")


def warm_up(step):
    """Load the test set that the accuracy checks use."""
    mnist(data_dir(step), False)


# Accuracies, in this process only: the same parameters (or batch indices) give the same figure,
# so a worker computes it once for all the students whose models are equal to the last bit, most
# often the correct ones.
KNOWN_ACCURACIES = Memo()


class Context:
    """What checks consult besides their own report: the executed notebook, MNIST, and the
    sandboxed retraining."""

    def __init__(self, reports, nb, step):
        self.reports, self.nb, self.step = reports, nb, step
        self.data_dir = data_dir(step)
        self._retrained = {}

    def cell_failed(self, grade_id):
        cell = next((c for c in self.nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id), None)
        return cell is None or any(o.get("output_type") == "error" for o in cell.get("outputs", []))

    def test_accuracy(self, model_name, params, estimate=False):
        """`estimate`: computed without torch (reference.predict); MLP_Numpy's is exact anyway."""
        estimate = estimate and ref.MODELS[model_name].cls is not ref.MLP_Numpy
        return KNOWN_ACCURACIES.get(("test", model_name, estimate, self.data_dir), params,
                                    lambda: self._test_accuracy(model_name, params, estimate))

    def _test_accuracy(self, model_name, params, estimate):
        images, labels = mnist(self.data_dir, False)
        try:
            return ref.accuracy(model_name, params, images, labels, estimate)
        except (ValueError, RuntimeError, IndexError) as err:
            raise Failed(f"the trained parameters of {model_name} cannot be used by a correct forward pass "
                         f"({type(err).__name__}); check their shapes.") from None

    def reference_accuracy(self, model_name, indices):
        return KNOWN_ACCURACIES.get(("reference", model_name, self.data_dir), [indices],
                                    lambda: self._reference_accuracy(model_name, indices))

    def _reference_accuracy(self, model_name, indices):
        images, labels = mnist(self.data_dir, True)
        net = ref.train(model_name, images, labels, indices=indices)
        return self.test_accuracy(model_name, [ref.as_numpy(p) for p in net.params])

    def retrain(self, test, model_name, student_model):
        """Parameters after training in a sandboxed kernel (see retrain.py)."""
        from .retrain import retrain
        key = (test, student_model)
        if key not in self._retrained:
            not_beside_the_kernel("retraining in a second kernel")
            self._retrained[key] = retrain(self.nb, self.step, test, model_name, student_model)
        return self._retrained[key]


def context(reports, nb, step):
    return Context(reports, nb, step)
