"""Kernel side of Tutorial 3's tests: call the student's code on the grader's inputs and report
what it returns, as plain arrays. No reference and no expected values live here: the grader's
process decides every verdict (checks.py).

This file runs inside the student's kernel (the grader pastes it into the hidden set-up cell),
so it imports nothing of the course package. `probe(test, notebook, inputs)` returns the report
of one test cell: a dict of NumPy arrays or strings.
"""
import numpy as np


class Stop(Exception):
    """The student's code could not be probed; the message says why."""


def array(value):
    """A plain array of `value` (tensors detached), or Stop if it is not numeric."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    out = np.asarray(value)
    if out.dtype.kind not in "biuf":
        raise Stop(f"expected numbers, got {type(value).__name__}")
    return out


def call(what, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        raise Stop(f"{what} raised {type(err).__name__}: {err}") from None


def defined(ns, name):
    value = ns.get(name)
    if not callable(value):
        raise Stop(f"{name} is not defined: run its cell and fix the error it shows.")
    return value


def bare(cls):
    """An instance of the student's class without running its __init__."""
    return cls.__new__(cls)


def torch_tensors(values, requires_grad=False):
    import torch
    return [torch.tensor(v, dtype=torch.float, requires_grad=requires_grad) for v in values]


def param_fields(params, values="all", prefix="param"):
    """params[i] with its kind (tensor or not), dtype and requires_grad; its values in full
    (`values="all"`), a sample of at most 4096 of them and its shape ("sample"), or its shape."""
    if not isinstance(params, (list, tuple)):
        raise Stop(f"params should be a list, got {type(params).__name__}")
    fields = {"count": np.array(len(params))}
    for i, p in enumerate(params):
        value = array(p)
        fields[f"{prefix}{i}_shape"] = np.array(value.shape, dtype=np.int64)
        if values == "all":
            fields[f"{prefix}{i}"] = value
        elif values == "sample":
            fields[f"{prefix}{i}"] = value.ravel()[::max(1, value.size // 4096)][:4096].astype(np.float64)
        fields[f"{prefix}{i}_tensor"] = np.array(hasattr(p, "detach"))
        fields[f"{prefix}{i}_float32"] = np.array(str(getattr(p, "dtype", "")) in ("torch.float32", "float32"))
        fields[f"{prefix}{i}_requires_grad"] = np.array(bool(getattr(p, "requires_grad", False)))
    return fields


# ------------------------------------------------------------------------------ Task 1
def sampler_draws(sampler, size, batch_size, rng, draws=1):
    """Indices `sampler` draws from data whose rows hold their own index, and its labels."""
    rows = np.arange(size).reshape(size, 1)
    imgs, lbls = [], []
    for _ in range(draws):
        out = call("get_random_batch", sampler, rows, rows.copy(), batch_size, rng)
        if not isinstance(out, (list, tuple)) or len(out) != 2:
            raise Stop("get_random_batch should return two things: [images, labels].")
        imgs.append(array(out[0]))
        lbls.append(array(out[1]))
    try:
        return np.stack(imgs), np.stack(lbls)
    except ValueError:
        raise Stop("get_random_batch returned batches of different shapes.") from None


def probe_batch_changes(ns, inputs):
    imgs, lbls = sampler_draws(defined(ns, "get_random_batch"), 60000, 40, np.random.RandomState(0), draws=2)
    return {"imgs": imgs, "lbls": lbls}


def probe_batch_correct(ns, inputs):
    sampler, fields = defined(ns, "get_random_batch"), {}
    for case, (size, batch_size, seed, draws) in enumerate(inputs["sampler_cases"]):
        rng = np.random.RandomState(seed)
        fields[f"imgs{case}"], fields[f"lbls{case}"] = sampler_draws(sampler, size, batch_size, rng, draws)
        fields[f"next{case}"] = np.array(rng.randint(1 << 30))
    return fields


def training_indices(ns, inputs, model):
    """The [iterations, batch] indices the sampler draws when training `model`, from the rng
    state that the model's initialisation leaves."""
    rng = np.random.RandomState()
    rng.set_state(("MT19937", inputs[f"rng_after_init_{model}"], int(inputs[f"rng_pos_{model}"]), 0, 0.0))
    imgs, lbls = sampler_draws(defined(ns, "get_random_batch"), 60000, int(inputs["batch"]), rng,
                               int(inputs["iterations"]))
    return imgs[..., 0].astype(np.int32)


# ------------------------------------------------------------------------------ models
def probe_sane(cls_name, layout):
    def probe(ns, inputs):
        net = call(f"{cls_name}(rng)", defined(ns, cls_name), rng=np.random.RandomState(0))
        fields = param_fields(getattr(net, "params", None), values="none")
        fields["y"] = array(call(f"{cls_name}.forward_pass", net.forward_pass, inputs[f"sane_{layout}"]))
        return fields
    return probe


def probe_init(cls_name):
    def probe(ns, inputs):
        net = call(f"{cls_name}(rng)", defined(ns, cls_name), rng=np.random.RandomState(int(inputs["seed"])))
        return param_fields(getattr(net, "params", None), values="sample")
    return probe


def forward_output(ns, cls_name, params, images):
    net = bare(defined(ns, cls_name))
    net.params = params
    return array(call(f"{cls_name}.forward_pass", net.forward_pass, images))


def probe_forward(cls_name, kind):
    def probe(ns, inputs):
        params = [inputs[f"forward_{kind}_w{i}"] for i in range(int(inputs[f"forward_{kind}_count"]))]
        if kind != "numpy":
            params = torch_tensors(params)
        return {"y": forward_output(ns, cls_name, params, inputs[f"forward_{kind}_images"])}
    return probe


def probe_manual_backward(cls_name, kind):
    """backward_pass fed the grader's activations (a correct forward pass), so that a wrong
    forward pass does not fail this test too."""
    def probe(ns, inputs):
        net = bare(defined(ns, cls_name))
        values = [inputs[f"backward_{name}"] for name in ("w1", "w2")]
        acts = [inputs[f"backward_act{i}"] for i in range(6)]
        if kind == "torch":
            values, acts = torch_tensors(values), torch_tensors(acts)
        net.params = values
        setattr(net, f"_{cls_name}__activations", list(acts))
        grads = call(f"{cls_name}.backward_pass", net.backward_pass, None, inputs["backward_y_real"])
        if not isinstance(grads, (list, tuple)) or len(grads) != 2:
            raise Stop("backward_pass should return a list of two gradients, [grad_w1, grad_w2].")
        return {"grad_w1": array(grads[0]), "grad_w2": array(grads[1])}
    return probe


def probe_autograd_backward(ns, inputs):
    """backward_pass given a loss whose gradients the grader knows: sum(c * w ** 2)."""
    net = bare(defined(ns, "MLP_Torch_Autograd"))
    net.params = torch_tensors([inputs["autograd_w1"], inputs["autograd_w2"]], requires_grad=True)
    coeffs = torch_tensors([inputs["autograd_c1"], inputs["autograd_c2"]])
    loss = sum((c * w ** 2).sum() for c, w in zip(coeffs, net.params))
    grads = call("MLP_Torch_Autograd.backward_pass", net.backward_pass, loss, inputs["backward_y_real"])
    if not isinstance(grads, (list, tuple)) or len(grads) != 2:
        raise Stop("backward_pass should return a list with one gradient per parameter.")
    fields = {}
    for i, g in enumerate(grads):
        if not hasattr(g, "detach"):
            raise Stop(f"gradient {i} is {type(g).__name__}: after loss.backward(), each parameter holds its "
                       f"gradient in an attribute; return those.")
        fields[f"grad{i}"] = array(g)
    return fields


# ------------------------------------------------------------------------------ losses and updates
def probe_loss(name, as_torch):
    def probe(ns, inputs):
        fn, fields = defined(ns, name), {}
        for case in range(int(inputs["loss_cases"])):
            y_pred, y_real = inputs[f"loss_pred{case}"], inputs[f"loss_real{case}"]
            if as_torch:
                import torch
                y_pred = torch.tensor(y_pred, dtype=torch.float, requires_grad=True)
            loss = call(name, fn, y_pred, y_real)
            fields[f"loss{case}"] = array(loss)
            if as_torch:
                fields[f"is_tensor{case}"] = np.array(hasattr(loss, "detach"))
                fields[f"connected{case}"] = np.array(bool(getattr(loss, "requires_grad", False)))
                if fields[f"connected{case}"] and np.ndim(fields[f"loss{case}"]) == 0:
                    call("loss.backward()", loss.backward)
                    fields[f"grad{case}"] = array(y_pred.grad if y_pred.grad is not None else np.zeros(0))
        if as_torch:  # the given conversion lines also accept numpy arrays
            loss = call(name, fn, inputs["loss_pred0"], inputs["loss_real0"])
            fields["numpy_in_tensor_out"] = np.array(hasattr(loss, "detach"))
        return fields
    return probe


def probe_loss_sane(name, as_torch):
    def probe(ns, inputs):
        fn, y_real = defined(ns, name), np.eye(10)[[3, 1, 4]]
        uniform = np.full((3, 10), 0.1)
        if as_torch:
            import torch
            uniform = torch.full((3, 10), 0.1)
        out = call(name, fn, uniform, y_real)
        fields = {"uniform": array(out), "is_tensor": np.array(hasattr(out, "detach"))}
        if not as_torch:
            fields["confident"] = array(call(name, fn, y_real * 0.999 + 0.0001, y_real))
        return fields
    return probe


def probe_update(name, kind):
    def probe(ns, inputs):
        fn = defined(ns, name)
        values, grads = [inputs["update_p0"], inputs["update_p1"]], [inputs["update_g0"], inputs["update_g1"]]
        if kind == "numpy":
            params = [v.copy() for v in values]
        else:
            import torch
            params = torch_tensors(values, requires_grad=(kind == "autograd"))
            grads = torch_tensors(grads)
            if kind == "autograd":
                for p, g in zip(params, grads):
                    p.grad = g.clone()
                grads = [p.grad for p in params]
        originals = list(params)
        call(name, fn, params, grads, learning_rate=float(inputs["update_lr"]))
        fields = {"count": np.array(len(params))}
        for i, p in enumerate(params[:2]):
            fields[f"p{i}"] = array(p)
            fields[f"same{i}"] = np.array(p is originals[i])
            if kind == "autograd":
                fields[f"grad{i}"] = array(p.grad if p.grad is not None else np.full(np.shape(values[i]), np.nan))
        return fields
    return probe


# ------------------------------------------------------------------------------ final accuracy
def probe_accuracy(model, loss_probe, update_probe, forward_of=None):
    """The trained model's parameters, and what the helpers it was trained with do on the
    grader's inputs (so that the grader can tell which figure to expect)."""
    def probe(ns, inputs):
        net = ns.get("net")
        fields = {"model": np.array(type(net).__name__)}
        try:
            fields.update(param_fields(getattr(net, "params", None)))
        except Stop as why:
            fields["params_error"] = np.array(str(why))
        parts = [("indices", lambda: {"": training_indices(ns, inputs, model)}),
                 ("loss", lambda: loss_probe(ns, inputs)), ("update", lambda: update_probe(ns, inputs))]
        if forward_of:
            parts.append(("forward", lambda: {"y": forward_output(ns, forward_of, torch_tensors(
                [inputs["forward_torch_w0"], inputs["forward_torch_w1"]]), inputs["forward_torch_images"])}))
        for part, run in parts:
            try:
                fields.update({f"{part}_{k}".rstrip("_"): v for k, v in run().items()})
            except Stop as why:
                fields[f"{part}_error"] = np.array(str(why))
        return fields
    return probe


LOSS_NUMPY, LOSS_TORCH = probe_loss("cross_entropy_numpy", False), probe_loss("cross_entropy_torch", True)
UPDATE_NUMPY = probe_update("grad_descent_update_numpy", "numpy")
UPDATE_TORCH = probe_update("grad_descent_update_torch", "torch")
UPDATE_AUTOGRAD = probe_update("grad_descent_update_autograd", "autograd")

PROBES = {
    "task1_random_batch_changes": probe_batch_changes,
    "task1_random_batch_correct": probe_batch_correct,
    "task2_mlp_numpy_sane": probe_sane("MLP_Numpy", "flat"),
    "task2_mlp_numpy_init_correct": probe_init("MLP_Numpy"),
    "task2_mlp_numpy_forward_correct": probe_forward("MLP_Numpy", "numpy"),
    "task2_mlp_numpy_backward_correct": probe_manual_backward("MLP_Numpy", "numpy"),
    "task2_cross_entropy_numpy_sane": probe_loss_sane("cross_entropy_numpy", False),
    "task2_cross_entropy_numpy_correct": LOSS_NUMPY,
    "task2_update_numpy_correct": UPDATE_NUMPY,
    "task2_mlp_numpy_accuracy": probe_accuracy("MLP_Numpy", LOSS_NUMPY, UPDATE_NUMPY),
    "task3_mlp_torch_sane": probe_sane("MLP_Torch", "flat"),
    "task3_mlp_torch_init_correct": probe_init("MLP_Torch"),
    "task3_mlp_torch_forward_correct": probe_forward("MLP_Torch", "torch"),
    "task3_mlp_torch_backward_correct": probe_manual_backward("MLP_Torch", "torch"),
    "task3_cross_entropy_torch_sane": probe_loss_sane("cross_entropy_torch", True),
    "task3_cross_entropy_torch_correct": LOSS_TORCH,
    "task3_update_torch_correct": UPDATE_TORCH,
    "task3_mlp_torch_accuracy": probe_accuracy("MLP_Torch", LOSS_TORCH, UPDATE_TORCH),
    "task4_mlp_autograd_sane": probe_sane("MLP_Torch_Autograd", "flat"),
    "task4_mlp_autograd_init_correct": probe_init("MLP_Torch_Autograd"),
    "task4_mlp_autograd_backward_correct": probe_autograd_backward,
    "task4_update_autograd_correct": UPDATE_AUTOGRAD,
    "task4_mlp_autograd_accuracy": probe_accuracy("MLP_Torch_Autograd", LOSS_TORCH, UPDATE_AUTOGRAD,
                                                  forward_of="MLP_Torch_Autograd"),
    "task5_cnn_sane": probe_sane("CNN_Torch_Autograd", "cnn"),
    "task5_cnn_init_correct": probe_init("CNN_Torch_Autograd"),
    "task5_cnn_forward_correct": probe_forward("CNN_Torch_Autograd", "cnn"),
    "task5_cnn_accuracy": probe_accuracy("CNN_Torch_Autograd", LOSS_TORCH, UPDATE_AUTOGRAD),
}


def probe(test, ns, inputs):
    """The report of test cell `test`: the probe's fields, or {"error": why}."""
    try:
        return PROBES[test](ns, inputs)
    except Stop as why:
        return {"error": np.array(str(why))}
