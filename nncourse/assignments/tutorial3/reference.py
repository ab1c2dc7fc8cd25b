"""Tutorial 3's reference solution: the seed's arithmetic, as ordinary Python.

Only the grader's process imports this module (and the sandboxed retraining of
`retrain.py`, for a student whose helpers already lost their points). It never reaches
the student's kernel during normal grading.
"""
import sys
from functools import lru_cache

import numpy as np

try:
    from nncourse.verdicts import LazyModule
except ImportError:  # this file run by its source in a retraining kernel (retrain.py), which has no nncourse
    import torch
    from torch.nn import functional as F
else:  # in the grader: imported at their first use, so that the kernel starts sooner (docs/grading.md)
    torch, F = LazyModule("torch"), LazyModule("torch.nn.functional")

SEED, ITERS, BATCH, LR = 42, 400, 40, 1e-2
# Final test accuracy must be within this many percentage points of the expected figure.
ACCURACY_TOLERANCE = 0.3
# How far an accuracy estimated without torch (predict's `estimate`) may be from torch's own figure:
# estimates whose difference is nearer than twice this to the tolerance's edge are computed again with torch.
ESTIMATE_MARGIN = 0.05
# The seed's stated test accuracies, by kind of sampler (reproduced exactly by this module).
STATED = {
    "MLP_Numpy": {"random": 88.15, "constant": 59.57},
    "MLP_Torch": {"random": 88.14, "constant": 59.57},
    "MLP_Torch_Autograd": {"random": 88.15, "constant": 59.57},
    "CNN_Torch_Autograd": {"random": 87.61, "constant": 63.02},
}


def random_batch(imgs, lbls, batch_size, rng):
    indices = rng.randint(low=0, high=imgs.shape[0], size=batch_size, dtype="int32")
    return [imgs[indices], lbls[indices]]


def constant_batch(imgs, lbls, batch_size, rng):
    indices = range(0, batch_size)
    return [imgs[indices], lbls[indices]]


def cross_entropy_numpy(y_pred, y_real, eps=1e-7):
    return np.mean(-np.sum(y_real * np.log(y_pred + eps), axis=1), axis=0)


def cross_entropy_torch(y_pred, y_real, eps=1e-7):
    y_pred = torch.tensor(y_pred, dtype=torch.float) if type(y_pred) is np.ndarray else y_pred
    y_real = torch.tensor(y_real, dtype=torch.float) if type(y_real) is np.ndarray else y_real
    return torch.mean(-torch.sum(y_real * torch.log(y_pred + eps), dim=1), dim=0)


def update_numpy(params, grads, learning_rate):
    for i in range(len(params)):
        params[i] = params[i] - learning_rate * grads[i]


def update_torch(params, grads, learning_rate):
    for i in range(len(params)):
        params[i].data = params[i].data - learning_rate * grads[i].data


def update_autograd(params, grads, learning_rate):
    for i in range(len(params)):
        params[i].data -= learning_rate * grads[i].data
        grads[i].zero_()


def mlp_init(rng):
    return [rng.normal(loc=0.0, scale=0.01, size=(785, 1000)),
            rng.normal(loc=0.0, scale=0.01, size=(1001, 10))]


def cnn_init(rng):
    return [rng.normal(loc=0.0, scale=0.01, size=s) for s in [(10, 1, 5, 5), (10,), (1440, 10), (10,)]]


class MLP_Numpy:
    def __init__(self, rng):
        self.params = mlp_init(rng)

    def forward_pass(self, batch_imgs):
        w1, w2 = self.params
        ones = np.ones(shape=(batch_imgs.shape[0], 1))
        x = np.concatenate((batch_imgs, ones), axis=1)
        h1 = x.dot(w1)
        h1_relu = np.maximum(h1, 0)
        h1_ext = np.concatenate((h1_relu, ones), axis=1)
        logits = h1_ext.dot(w2)
        exp_logits = np.exp(logits)
        y_pred = exp_logits / np.sum(exp_logits, axis=1, keepdims=True)
        self.__activations = [x, h1, h1_relu, h1_ext, logits, y_pred]
        return y_pred

    def backward_pass(self, loss, y_real):
        x, h1, h1_relu, h1_ext, h2, y_pred = self.__activations
        w1, w2 = self.params
        grad_logits = (y_pred - y_real) / y_pred.shape[0]
        grad_w2 = h1_ext.transpose().dot(grad_logits)
        grad_h1 = grad_logits.dot(w2.transpose())[:, :-1].copy()
        grad_h1[h1 < 0] = 0
        grad_w1 = x.transpose().dot(grad_h1)
        return [grad_w1, grad_w2]


class MLP_Torch:
    requires_grad = False

    def __init__(self, rng):
        self.params = [torch.tensor(w, dtype=torch.float, requires_grad=self.requires_grad) for w in mlp_init(rng)]

    def forward_pass(self, batch_imgs):
        w1, w2 = self.params
        ones = torch.ones(size=(batch_imgs.shape[0], 1))
        x = torch.cat((torch.tensor(batch_imgs, dtype=torch.float), ones), dim=1)
        h1 = x.mm(w1)
        h1_relu = h1.clamp(min=0)
        h1_ext = torch.cat((h1_relu, ones), dim=1)
        logits = h1_ext.mm(w2)
        exp_logits = torch.exp(logits)
        y_pred = exp_logits / torch.sum(exp_logits, dim=1, keepdim=True)
        self.__activations = [x, h1, h1_relu, h1_ext, logits, y_pred]
        return y_pred

    def backward_pass(self, loss, y_real):
        x, h1, h1_relu, h1_ext, h2, y_pred = self.__activations
        w1, w2 = self.params
        y_real = torch.tensor(y_real, dtype=torch.float) if type(y_real) is np.ndarray else y_real
        grad_logits = (y_pred - y_real) / y_pred.shape[0]
        grad_w2 = h1_ext.t().mm(grad_logits)
        grad_h1 = grad_logits.mm(w2.t())[:, :-1].clone()
        grad_h1[h1 < 0] = 0
        grad_w1 = x.t().mm(grad_h1)
        return [grad_w1, grad_w2]


class MLP_Torch_Autograd(MLP_Torch):
    requires_grad = True

    def backward_pass(self, loss, y_real):
        loss.backward()
        return [param.grad for param in self.params]


class CNN_Torch_Autograd(MLP_Torch_Autograd):
    def __init__(self, rng):
        self.params = [torch.tensor(v, dtype=torch.float, requires_grad=True) for v in cnn_init(rng)]

    def forward_pass(self, batch_imgs):
        w1, b1, w2, b2 = self.params
        x = torch.tensor(batch_imgs, dtype=torch.float)
        h1 = F.conv2d(input=x, weight=w1, bias=None, stride=1, padding=0, dilation=1)
        h1_relu = (h1 + b1.reshape([1, b1.shape[0], 1, 1])).clamp(min=0)
        h1_pool = F.max_pool2d(h1_relu, kernel_size=[2, 2], stride=[2, 2], padding=0, ceil_mode=True)
        logits = h1_pool.reshape([h1_pool.shape[0], -1]).mm(w2) + b2.reshape([1, b2.shape[0]])
        exp_logits = torch.exp(logits)
        return exp_logits / torch.sum(exp_logits, dim=1, keepdim=True)


# The classes carry the notebook's names, so that a stand-in is the class itself.


class Model:
    """How the notebook trains one of its models: the reference class, its input layout, the
    names of the student's helpers it uses, and whether training uses the loss's gradient."""

    def __init__(self, name, cls, layout, loss, update, autograd, parent=None):
        self.name, self.cls, self.layout, self.loss, self.update = name, cls, layout, loss, update
        self.autograd, self.parent = autograd, parent


MODELS = {m.name: m for m in [
    Model("MLP_Numpy", MLP_Numpy, "flat", "cross_entropy_numpy", "grad_descent_update_numpy", False),
    Model("MLP_Torch", MLP_Torch, "flat", "cross_entropy_torch", "grad_descent_update_torch", False),
    Model("MLP_Torch_Autograd", MLP_Torch_Autograd, "flat", "cross_entropy_torch", "grad_descent_update_autograd", True,
          parent="MLP_Torch"),
    Model("CNN_Torch_Autograd", CNN_Torch_Autograd, "cnn", "cross_entropy_torch", "grad_descent_update_autograd", True),
]}
HELPERS = {"get_random_batch": random_batch, "cross_entropy_numpy": cross_entropy_numpy,
           "cross_entropy_torch": cross_entropy_torch, "grad_descent_update_numpy": update_numpy,
           "grad_descent_update_torch": update_torch, "grad_descent_update_autograd": update_autograd}


def normalize(images):
    """The notebook's preprocessing: standardise over the whole set (float64)."""
    images = np.asarray(images, dtype=np.uint8)
    return (images - np.mean(images, axis=(0, 1, 2), keepdims=True)) / np.std(images, axis=(0, 1, 2), keepdims=True)


def layout_images(images, layout):
    """Normalised images shaped for a model: flat [N, 784] or CNN [N, 1, 28, 28]."""
    return images.reshape([images.shape[0], -1]) if layout == "flat" else images.reshape([images.shape[0], 1, 28, 28])


def onehot(labels, classes=10):
    out = np.zeros((len(labels), classes))
    out[np.arange(len(labels)), labels] = 1
    return out


def init_params(model_name):
    """A model's initial parameters, drawn as the training cell does (numpy arrays: float32 where the
    model holds tensors), and the rng after that (copies of what is drawn once per process)."""
    params, state = first_draw(model_name)
    rng = np.random.RandomState()
    rng.set_state(state)
    return [p.copy() for p in params], rng


@lru_cache(maxsize=None)
def first_draw(model_name):
    """What the model's __init__ draws, without building it (no torch): torch.tensor(w, dtype=torch.float)
    rounds each float64 draw to float32 as astype does."""
    model = MODELS[model_name]
    rng = np.random.RandomState(SEED)
    params = (mlp_init if model.layout == "flat" else cnn_init)(rng)
    return [p if model.cls is MLP_Numpy else p.astype(np.float32) for p in params], rng.get_state()


def batch_indices(sampler, model_name):
    """The [ITERS, BATCH] training-set indices `sampler` draws when training `model_name`."""
    _, rng = init_params(model_name)
    rows = np.arange(60000)
    return np.stack([np.asarray(sampler(rows, rows, BATCH, rng)[0]) for _ in range(ITERS)])


def predict(model_name, params, images, estimate=False):
    """Class probabilities of the reference forward pass with the given parameters. `estimate`: the
    torch models' float32 arithmetic done by numpy, without torch; BLAS rounds differently, which
    moves a class only where two are nearly tied (ESTIMATE_MARGIN; tests/test_checks.py)."""
    model = MODELS[model_name]
    x = layout_images(images, model.layout)
    net = model.cls.__new__(model.cls)
    if model.cls is MLP_Numpy:
        net.params = [np.asarray(p, dtype=np.float64) for p in params]
        return net.forward_pass(x)
    if not estimate:
        net.params = [torch.as_tensor(np.asarray(p), dtype=torch.float) for p in params]
        with torch.no_grad():
            return net.forward_pass(x).numpy()
    params, x = [np.asarray(p, dtype=np.float32) for p in params], x.astype(np.float32)
    if model.layout == "flat":
        w1, w2 = params
        ones = np.ones((x.shape[0], 1), dtype=np.float32)
        hidden = np.maximum(np.concatenate((x, ones), axis=1) @ w1, 0)
        logits = np.concatenate((hidden, ones), axis=1) @ w2
    else:
        w1, b1, w2, b2 = params  # conv2d (no padding), + bias, ReLU, 2x2 max-pool, linear
        channels, _, k, _ = w1.shape
        n, rows, cols = x.shape[0], x.shape[2] - k + 1, x.shape[3] - k + 1
        taps = np.empty((k, k, n, rows, cols), dtype=np.float32)  # each kernel tap's view of the images
        for i in range(k):
            for j in range(k):
                taps[i, j] = x[:, 0, i:i + rows, j:j + cols]
        conv = (w1.reshape(channels, -1) @ taps.reshape(k * k, -1)).reshape(channels, n, rows, cols)
        relu = np.maximum(conv + b1.reshape(-1, 1, 1, 1), 0)
        if rows % 2 or cols % 2:
            raise ValueError(f"a {rows}x{cols} feature map does not pool 2x2")
        pooled = np.maximum(relu[:, :, 0::2], relu[:, :, 1::2])
        pooled = np.maximum(pooled[..., 0::2], pooled[..., 1::2]).transpose(1, 0, 2, 3)
        logits = pooled.reshape(n, -1) @ w2 + b2
    with np.errstate(over="ignore", invalid="ignore"):  # inf and nan as torch gives them, silently
        exp_logits = np.exp(logits)
        return exp_logits / np.sum(exp_logits, axis=1, keepdims=True)


def accuracy(model_name, params, images, labels, estimate=False, chunk=500):
    """Test accuracy in percent: `images` normalised [N, 28, 28], `labels` integers; `estimate`: see
    predict. Predicted `chunk` images at a time, in about half the time (the activations stay in the
    CPU's cache): the same classes, probabilities equal but for rounding (tests/test_checks.py)."""
    y = np.concatenate([predict(model_name, params, images[i:i + chunk], estimate)
                        for i in range(0, len(images), chunk)])
    return float(np.mean(np.argmax(y, axis=1) == np.asarray(labels)) * 100.0)


def train(model_name, train_images, train_labels, sampler=random_batch, loss=None, update=None, cls=None,
          indices=None):
    """The notebook's gradient_descent without its printing and test-set evaluations. `indices`
    ([ITERS, BATCH]) replaces the sampler; `cls` replaces the reference class. Returns the net."""
    model = MODELS[model_name]
    loss = loss or HELPERS[model.loss]
    update = update or HELPERS[model.update]
    rng = np.random.RandomState(SEED)
    net = (cls or model.cls)(rng)
    imgs, lbls = layout_images(train_images, model.layout), onehot(train_labels)
    for t in range(ITERS):
        if indices is not None:
            batch_imgs, batch_lbls = imgs[indices[t]], lbls[indices[t]]
        else:
            batch_imgs, batch_lbls = sampler(imgs, lbls, BATCH, rng)
        y_pred = net.forward_pass(batch_imgs)
        value = loss(y_pred, batch_lbls)
        grads = net.backward_pass(value, batch_lbls)
        update(net.params, grads, learning_rate=LR)
    return net


def as_numpy(x):
    """x, a tensor or an array, as a numpy array (a tensor means torch is imported: this imports nothing)."""
    loaded = sys.modules.get("torch")
    return x.detach().cpu().numpy() if loaded is not None and isinstance(x, loaded.Tensor) else np.asarray(x)
