"""Sample students: the release's blanks filled in by hand, as a student would, with no use of the source.

Each student is the correct answers with a few edits, and names the test cells that its
edits are designed to fail. Every other autograded cell must get full points.
"""
from dataclasses import dataclass, field

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

BY_NAME = {s.name: s for s in STUDENTS}
