"""Sample students: the release's blanks filled in by hand, as a student would, with no use of the source.

Each student is the correct answers with a few edits, and names the test cells that its
edits are designed to fail. Every other autograded cell must get full points. STYLES are fully
correct notebooks written in the different ways students write code: each must earn 42/42.
"""
from dataclasses import dataclass, field

import nbformat

from nncourse import notebook

# cell grade_id -> [(text of a blank in the release, what a student writes there)]
CORRECT = {
    "task1_random_batch": [
        ("#indices = rng.randint(low=??????, high=train_imgs.shape[???????], size=?????????, dtype='int32')",
         "indices = rng.randint(low=0, high=train_imgs.shape[0], size=batch_size, dtype='int32')"),
        ("indices = range(0, batch_size)", "# (constant batch removed)"),
    ],
    "task2_mlp_numpy": [
        ("size=(D_in+1, ?????))", "size=(D_in+1, D_hid))"),
        ("size=(??????, D_out))", "size=(D_hid+1, D_out))"),
        ("h1 = x.dot(?????)", "h1 = x.dot(w1)"),
        ("h1_relu = np.maximum(????, ????)", "h1_relu = np.maximum(0, h1)"),
        ("np.concatenate((?????, unary_feature_for_bias)", "np.concatenate((h1_relu, unary_feature_for_bias)"),
        ("h2 = ????.????(w2)", "h2 = h1_ext.dot(w2)"),
        ("????? = h2", "logits = h2"),
        ("grad_w2 = h1_ext.transpose().dot(?????)", "grad_w2 = h1_ext.transpose().dot(grad_logits)"),
        ("grad_h1[ ????? < 0] = 0", "grad_h1[ h1 < 0] = 0"),
        ("grad_w1 = ?????.transpose()", "grad_w1 = x.transpose()"),
    ],
    "task2_cross_entropy_numpy": [
        ("- np.????( ???? * np.????( ????? + eps), axis=1)", "- np.sum( y_real * np.log( y_pred + eps), axis=1)"),
    ],
    "task2_update_numpy": [
        ("params[i] = ????? - ????? * grads[i]", "params[i] = params[i] - learning_rate * grads[i]"),
    ],
    "task2_why_overfit": [
        ("YOUR ANSWER HERE", "It trains on the same 40 images every time, so the big network memorises them."),
    ],
    "task2_why_unstable": [
        ("YOUR ANSWER HERE", "Every batch is a different random 40 samples, so each gradient step is noisy."),
    ],
    "task3_mlp_torch": [
        ("size=(D_in+1, ?????))", "size=(D_in+1, D_hid))"),
        ("size=(??????, ?????))", "size=(D_hid+1, D_out))"),
        ("h1 = x.mm(?????)", "h1 = x.mm(w1)"),
        ("h1_relu = ????.clamp(min=????)", "h1_relu = h1.clamp(min=0)"),
        ("torch.cat((?????, unary_feature_for_bias), dim=????)", "torch.cat((h1_relu, unary_feature_for_bias), dim=1)"),
        ("h2 = ????.????(w2)", "h2 = h1_ext.mm(w2)"),
        ("????? = h2", "logits = h2"),
        ("grad_w2 = h1_ext.t().mm(?????)", "grad_w2 = h1_ext.t().mm(grad_logits)"),
        ("grad_logits.mm(????.????())", "grad_logits.mm(w2.t())"),
        ("grad_h1[????? < 0] = 0", "grad_h1[h1 < 0] = 0"),
        ("grad_w1 = ????.t().mm(grad_h1)", "grad_w1 = x.t().mm(grad_h1)"),
    ],
    "task3_cross_entropy_torch": [
        ("- torch.????( ???? * torch.????( ???? + eps ), dim=1)", "- torch.sum( y_real * torch.log( y_pred + eps ), dim=1)"),
    ],
    "task3_update_torch": [
        ("params[i].data = ??????.data - ??????? * grads[i].data",
         "params[i].data = params[i].data - learning_rate * grads[i].data"),
    ],
    "task4_mlp_autograd": [
        ("size=(D_in+1, ????))", "size=(D_in+1, D_hid))"),
        ("size=(?????, ????))", "size=(D_hid+1, D_out))"),
        ("w1 = torch.tensor(w1_init, dtype=torch.float, requires_grad=????)",
         "w1 = torch.tensor(w1_init, dtype=torch.float, requires_grad=True)"),
        ("w2 = torch.tensor(w2_init, dtype=torch.float, requires_grad=????)",
         "w2 = torch.tensor(w2_init, dtype=torch.float, requires_grad=True)"),
        ("[param.????? for param", "[param.grad for param"),
    ],
    "task4_update_autograd": [
        ("?????????.data -= ??????????? * ?????????.data", "params[i].data -= learning_rate * grads[i].data"),
        ("?????[i].zero_()", "params[i].grad.zero_()"),
    ],
    "task5_cnn": [
        ("size=(?????, D_in, 5, ?????))", "size=(D_hid, D_in, 5, 5))"),
        ("size=(D_in_fc, ?????))", "size=(D_in_fc, D_out))"),
        ("size=(?????))", "size=(D_out))"),
        ("F.conv2d(input=??????, ?????=w1,", "F.conv2d(input=x, weight=w1,"),
        ("h1_bias = ?????? + b1_resh", "h1_bias = h1 + b1_resh"),
        ("h1_relu = ??????.clamp(min=0)", "h1_relu = h1_bias.clamp(min=0)"),
        ("F.max_pool2d(????, kernel_size", "F.max_pool2d(h1_relu, kernel_size"),
        ("h2 = h1_relu_flat.mm(??????)", "h2 = h1_relu_flat.mm(w2)"),
        ("logits = ????? + ??????.reshape(", "logits = h2 + b2.reshape("),
    ],
    "task5_why_1440": [
        ("YOUR ANSWER HERE", "28-5+1 = 24 after the conv, 12 after pooling, times 10 channels: 10*12*12 = 1440."),
    ],
}


@dataclass
class Student:
    name: str
    description: str
    # cell grade_id -> {blank text: what this student writes instead of the correct answer}
    edits: dict = field(default_factory=dict)
    # autograded cells this student must fail; every other autograded cell gets full points
    fails: frozenset = frozenset()
    # cell grade_id -> lines this student puts at the top of that cell (magics, imports, help)
    prefix: dict = field(default_factory=dict)
    # [(grade_id, source)]: code cells this student adds after that cell
    added: list = field(default_factory=list)

    def answers(self):
        """The blanks of the release and this student's text for each, by cell."""
        result = {}
        for cell, blanks in CORRECT.items():
            edits = self.edits.get(cell, {})
            unknown = set(edits) - {blank for blank, _ in blanks}
            if unknown:
                raise ValueError(f"student {self.name} edits unknown blanks in {cell}: {sorted(unknown)}")
            result[cell] = [(blank, edits.get(blank, answer)) for blank, answer in blanks]
        return result

    def notebook(self, release):
        """The release as this student submits it."""
        nb = notebook.fill_blanks(release, self.answers())
        cells = notebook.cells_by_id(nb)
        for grade_id, text in self.prefix.items():
            cells[grade_id].source = text + "\n" + cells[grade_id].source
        for grade_id, source in reversed(self.added):
            at = nb.cells.index(cells[grade_id]) + 1
            cell = nbformat.v4.new_code_cell(source)
            del cell["id"]  # this notebook's format (4.4) has no cell ids
            nb.cells.insert(at, cell)
        return nb


TASK1 = "#indices = rng.randint(low=??????, high=train_imgs.shape[???????], size=?????????, dtype='int32')"

STUDENTS = [
    Student("correct", "every blank filled correctly"),
    Student("constant_batch", "skipped Task 1: trains on the same 40 images every iteration",
            {"task1_random_batch": {TASK1: TASK1, "indices = range(0, batch_size)": "indices = range(0, batch_size)"}},
            frozenset({"task1_random_batch_changes", "task1_random_batch_correct"})),
    Student("task1_syntax_error", "Task 1 cell does not even parse; later tasks must not suffer",
            {"task1_random_batch": {TASK1: "indices = rng.randint(low=0, high=train_imgs.shape[0], size=batch_size"}},
            frozenset({"task1_random_batch_changes", "task1_random_batch_correct"})),
    Student("numpy_relu_mask_missing", "NumPy backprop masks with h1_relu < 0, which is never true",
            {"task2_mlp_numpy": {"grad_h1[ ????? < 0] = 0": "grad_h1[ h1_relu < 0] = 0"}},
            frozenset({"task2_mlp_numpy_backward_correct", "task2_mlp_numpy_accuracy"})),
    Student("numpy_ce_mean_over_classes", "NumPy cross-entropy averages over the classes instead of summing",
            {"task2_cross_entropy_numpy": {
                "- np.????( ???? * np.????( ????? + eps), axis=1)": "- np.mean( y_real * np.log( y_pred + eps), axis=1)"}},
            frozenset({"task2_cross_entropy_numpy_sane", "task2_cross_entropy_numpy_correct"})),
    Student("numpy_update_ascent", "NumPy update adds the gradient (gradient ascent)",
            {"task2_update_numpy": {"params[i] = ????? - ????? * grads[i]": "params[i] = params[i] + learning_rate * grads[i]"}},
            frozenset({"task2_update_numpy_correct"})),
    Student("torch_backprop_wrong_mask", "torch manual backprop masks on the sign of the gradient, not of h1",
            {"task3_mlp_torch": {"grad_h1[????? < 0] = 0": "grad_h1[grad_h1 < 0] = 0"}},
            frozenset({"task3_mlp_torch_backward_correct", "task3_mlp_torch_accuracy"})),
    Student("torch_ce_mean_over_classes", "torch cross-entropy averages over classes: Tasks 4 and 5 train "
                                          "with it and must still get full marks",
            {"task3_cross_entropy_torch": {
                "- torch.????( ???? * torch.????( ???? + eps ), dim=1)":
                    "- torch.mean( y_real * torch.log( y_pred + eps ), dim=1)"}},
            frozenset({"task3_cross_entropy_torch_sane", "task3_cross_entropy_torch_correct"})),
    Student("no_grad_zeroing", "autograd update never zeroes the gradients, so they accumulate",
            {"task4_update_autograd": {"?????[i].zero_()": "pass"}},
            frozenset({"task4_update_autograd_correct"})),
    Student("autograd_no_requires_grad", "autograd MLP parameters created without requires_grad",
            {"task4_mlp_autograd": {
                "w1 = torch.tensor(w1_init, dtype=torch.float, requires_grad=????)":
                    "w1 = torch.tensor(w1_init, dtype=torch.float, requires_grad=False)",
                "w2 = torch.tensor(w2_init, dtype=torch.float, requires_grad=????)":
                    "w2 = torch.tensor(w2_init, dtype=torch.float, requires_grad=False)"}},
            frozenset({"task4_mlp_autograd_sane", "task4_mlp_autograd_init_correct", "task4_mlp_autograd_accuracy"})),
    Student("cnn_forgets_bias", "CNN never adds the convolution's bias",
            {"task5_cnn": {"h1_bias = ?????? + b1_resh": "h1_bias = h1"}},
            frozenset({"task5_cnn_forward_correct", "task5_cnn_accuracy"})),
]

STUDENTS += [
    Student("sampler_without_replacement", "Task 1 draws a batch without replacement from the rng: a different "
                                           "correct method, full marks",
            {"task1_random_batch": {TASK1: "indices = rng.choice(train_imgs.shape[0], size=batch_size, replace=False)"}}),
    Student("numpy_update_crashes", "NumPy update indexes past the gradients and crashes: Task 2's model is then "
                                    "judged trained with correct helpers",
            {"task2_update_numpy": {"params[i] = ????? - ????? * grads[i]":
                                    "params[i] = params[i] - learning_rate * grads[i + 1]"}},
            frozenset({"task2_update_numpy_correct"})),
    Student("torch_mlp_syntax_error", "MLP_Torch does not parse: Task 3's model tests fail, Task 4 inherits a stand-in",
            {"task3_mlp_torch": {"h1 = x.mm(?????)": "h1 = x.mm(w1"}},
            frozenset({"task3_mlp_torch_sane", "task3_mlp_torch_init_correct", "task3_mlp_torch_forward_correct",
                       "task3_mlp_torch_backward_correct", "task3_mlp_torch_accuracy"})),
    Student("torch_ce_missing", "cross_entropy_torch does not parse: Task 3's model is judged trained with correct "
                                "helpers, Tasks 4 and 5 use a stand-in",
            {"task3_cross_entropy_torch": {"- torch.????( ???? * torch.????( ???? + eps ), dim=1)":
                                           "- torch.sum( y_real * torch.log( y_pred + eps ), dim=1"}},
            frozenset({"task3_cross_entropy_torch_sane", "task3_cross_entropy_torch_correct"})),
    Student("autograd_update_missing", "grad_descent_update_autograd does not parse: Task 4's model is judged "
                                       "trained with correct helpers, Task 5 uses a stand-in",
            {"task4_update_autograd": {"?????????.data -= ??????????? * ?????????.data":
                                       "params[i].data -= learning_rate * grads[i].data)"}},
            frozenset({"task4_update_autograd_correct"})),
]


# Fully correct notebooks in the styles students write; each must earn every autograded point.
HELPERS_CELL = '''import os
from typing import List

import numpy as np


def add_bias_column(batch: np.ndarray) -> np.ndarray:
    """The batch with a column of ones appended."""
    return np.hstack([batch, np.ones((batch.shape[0], 1))])


shapes: List[tuple] = []
print("working in", os.getcwd() is not None)'''

STYLES = [
    Student("style_debug_prints", "prints types and shapes while debugging",
            {"task5_cnn": {"F.max_pool2d(????, kernel_size": "F.max_pool2d(h1_relu, kernel_size"},
             "task2_mlp_numpy": {"h1 = x.dot(?????)": "h1 = x.dot(w1); print(type(h1), h1.shape)"},
             "task3_cross_entropy_torch": {"- torch.????( ???? * torch.????( ???? + eps ), dim=1)":
                                           "- torch.sum( y_real * torch.log( y_pred + eps ), dim=1); print(type(y_pred))"}},
            added=[("task5_cnn", "_net = CNN_Torch_Autograd(np.random.RandomState(0))\n"
                                 "h1_pool = _net.forward_pass(train_imgs_cnn[:2])\nprint(type(h1_pool), h1_pool.shape)")]),
    Student("style_magics", "%%time, %time, %matplotlib and a shell command",
            prefix={"task2_cross_entropy_numpy": "%%time", "task3_update_torch": "%%time",
                    "task1_random_batch": "%matplotlib inline"},
            added=[("task1_random_batch", "%time _b = get_random_batch(train_imgs_flat, train_lbls_onehot, 40, "
                                          "np.random.RandomState(1))\n!echo batch drawn")]),
    Student("style_help", "help() and ? on the API, as the notebook suggests",
            prefix={"task5_cnn": "help(F.conv2d)\nF.max_pool2d?", "task3_mlp_torch": "torch.cat?"},
            added=[("task5_api", "F.conv2d?"), ("task4_mlp_autograd", "help(MLP_Torch)")]),
    Student("style_from_numpy", "torch.from_numpy, np.asarray and requires_grad_ instead of torch.tensor",
            {"task4_mlp_autograd": {
                "w1 = torch.tensor(w1_init, dtype=torch.float, requires_grad=????)":
                    "w1 = torch.from_numpy(np.asarray(w1_init)).float().requires_grad_(True)",
                "w2 = torch.tensor(w2_init, dtype=torch.float, requires_grad=????)":
                    "w2 = torch.from_numpy(w2_init).float().requires_grad_()"},
             "task2_cross_entropy_numpy": {"- np.????( ???? * np.????( ????? + eps), axis=1)":
                                           "- np.asarray(y_real * np.log(np.asarray(y_pred) + eps)).sum(axis=1)"}}),
    Student("style_type_hints", "type-hinted helper functions and imports in cells of their own",
            {"task2_mlp_numpy": {"h2 = ????.????(w2)": "h2 = add_bias_column(h1_relu).dot(w2)",
                                 "????? = h2": "logits: np.ndarray = h2"},
             "task2_update_numpy": {"params[i] = ????? - ????? * grads[i]":
                                    "params[i] = step(params[i], grads[i], learning_rate)"}},
            added=[("task1_random_batch", HELPERS_CELL),
                   ("task2_cross_entropy_numpy", "def step(p: np.ndarray, g: np.ndarray, lr: float) -> np.ndarray:\n"
                                                 "    return p - lr * g")]),
    Student("style_dunder_methods", "operators written as their methods, and @",
            {"task2_mlp_numpy": {"h2 = ????.????(w2)": "h2 = h1_ext.__matmul__(w2)"},
             "task3_mlp_torch": {"h2 = ????.????(w2)": "h2 = h1_ext.__matmul__(w2)", "h1 = x.mm(?????)": "h1 = x @ w1"}}),
    Student("style_vectorised", "a list comprehension and an in-place method for the updates",
            {"task2_update_numpy": {"params[i] = ????? - ????? * grads[i]":
                                    "params[:] = [p - learning_rate * g for p, g in zip(params, grads)]; break"},
             "task3_update_torch": {"params[i].data = ??????.data - ??????? * grads[i].data":
                                    "params[i].data.sub_(learning_rate * grads[i].data)"}}),
    Student("style_alternative_ops", "einsum, clip, relu and method calls that compute the same",
            {"task2_mlp_numpy": {"h1 = x.dot(?????)": "h1 = np.einsum('nd,dh->nh', x, w1, optimize=True)",
                                 "h1_relu = np.maximum(????, ????)": "h1_relu = np.clip(h1, 0, None)"},
             "task3_mlp_torch": {"h1_relu = ????.clamp(min=????)": "h1_relu = torch.relu(h1)"},
             "task5_cnn": {"h1_relu = ??????.clamp(min=0)": "h1_relu = F.relu(h1_bias)"},
             "task3_cross_entropy_torch": {"- torch.????( ???? * torch.????( ???? + eps ), dim=1)":
                                           "-(y_real * (y_pred + eps).log()).sum(dim=1)"}}),
    Student("style_reflection", "getattr, vars, globals and inspect in the student's own cells",
            {"task4_mlp_autograd": {"[param.????? for param": "[getattr(param, 'grad') for param"}},
            added=[("task4_update_autograd", "import inspect\nprint(inspect.signature(grad_descent_update_autograd))\n"
                                             "print(sorted(k for k in globals() if k.startswith('grad_descent')))\n"
                                             "print(sorted(vars(MLP_Torch)))")]),
    Student("style_extra_experiments", "extra cells that explore the data and the models",
            added=[("preprocess_flatten", "print(train_imgs_flat.mean(), train_imgs_flat.std())\n"
                                          "counts = np.bincount(train_lbls)\nprint(counts)"),
                   ("task2_mlp_numpy", "_probe_net = MLP_Numpy(np.random.RandomState(7))\n"
                                       "print(_probe_net.forward_pass(train_imgs_flat[:3]).sum(axis=1))"),
                   ("task5_inputs", "plot_image(train_imgs[1])\nimport matplotlib.pyplot as plt\nplt.close('all')")]),
    Student("style_masked_multiply", "the ReLU gradient as a product with a mask, and a no_grad update",
            {"task2_mlp_numpy": {"grad_h1[ ????? < 0] = 0": "grad_h1 *= (h1 >= 0)"},
             "task3_mlp_torch": {"grad_h1[????? < 0] = 0": "grad_h1 = grad_h1 * (h1 >= 0).float()"},
             "task4_update_autograd": {"?????????.data -= ??????????? * ?????????.data":
                                       "with torch.no_grad(): params[i] -= learning_rate * grads[i]"}}),
    Student("style_own_sampler_code", "Task 1 written out with its own variable",
            {"task1_random_batch": {TASK1: "n_samples = train_imgs.shape[0]  # all training samples\n"
                                           "    indices = rng.randint(low=0, high=n_samples, size=batch_size, dtype='int32')"}}),
]

BONUS_CELL = '''class CNN_Deeper(CNN_Torch_Autograd):
    """Bonus: a second conv/pool stage before the classifier."""
    def __init__(self, rng):
        CNN_Torch_Autograd.__init__(self, rng)
        w1, b1, _, b2 = self.params
        more = [rng.normal(0, 0.01, size=(20, 10, 5, 5)), np.zeros(20), rng.normal(0, 0.01, size=(320, 10))]
        self.params = [w1, b1] + [torch.tensor(p, dtype=torch.float, requires_grad=True) for p in more] + [b2]

    def forward_pass(self, batch_imgs):
        w1, b1, w3, b3, w2, b2 = self.params
        x = torch.tensor(batch_imgs, dtype=torch.float)
        h = F.max_pool2d(F.conv2d(x, w1, b1).clamp(min=0), 2)  # 24x24, pooled to 12x12
        h = F.max_pool2d(F.conv2d(h, w3, b3).clamp(min=0), 2)  # 8x8, pooled to 4x4
        return torch.softmax(h.reshape(h.shape[0], -1).mm(w2) + b2, dim=1)


rng = np.random.RandomState(seed=SEED)
net = CNN_Deeper(rng=rng)
gradient_descent(net, cross_entropy_torch, grad_descent_update_autograd, rng, train_imgs_cnn, train_lbls_onehot,
                 test_imgs_cnn, test_lbls_onehot, batch_size=40, learning_rate=1e-2, total_iters=30, iters_per_test=100)'''
STYLES.append(Student("style_bonus_cnn", "the Bonus: a deeper CNN in a new class, trained into `net` and `rng` again",
                      added=[("task5_why_1440", BONUS_CELL)]))

BY_NAME = {s.name: s for s in STUDENTS + STYLES}
DEMO = ["correct", "constant_batch", "numpy_relu_mask_missing", "torch_ce_mean_over_classes"]  # the main job's four


def working_on(tasks):
    """A student part-way through: only `tasks` ({"task2", ...}) done, every other blank as released."""
    left = {cell: {blank: blank for blank, _ in blanks} for cell, blanks in CORRECT.items()
            if notebook.task_of(cell) not in tasks}
    return Student("done_" + "_".join(sorted(tasks)) if tasks else "blank", f"only {sorted(tasks)} done", left)
