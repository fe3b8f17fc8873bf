"""A zoo of tiny patients, one per diagnosis code, plus healthy ones.

Each entry is ``(name, accepted_top_codes, factory)``: the factory builds a fresh
``Patient``; the diagnosis is right when the top-ranked finding's code is one of
``accepted_top_codes`` (an empty set means "healthy": no critical finding at all).
Used by ``benchmarks/bench_accuracy.py`` (the whole battery, realistic budget) and
by ``tests/test_zoo.py`` (a quick subset).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from nandoctor.patient import Patient

# --- data ---------------------------------------------------------------------------------


def blobs(n=384, features=12, classes=3, seed=0, scale=1.0, weights=None):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=gen) * 2.0
    if weights is None:
        y = torch.randint(0, classes, (n,), generator=gen)
    else:
        y = torch.multinomial(torch.tensor(weights, dtype=torch.float), n, replacement=True, generator=gen)
    x = (centers[y] + torch.randn(n, features, generator=gen)) * scale
    return x, y


def images(n=192, channels=3, classes=4, seed=0, size=16):
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, channels, size, size, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return patterns[y] + 0.5 * torch.randn(n, channels, size, size, generator=gen), y


def regression(n=384, features=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(features, 1, generator=gen)
    x = torch.randn(n, features, generator=gen)
    return x, x @ w + 0.1 * torch.randn(n, 1, generator=gen)


def ds(x, y):
    return TensorDataset(x, y)


# --- models -------------------------------------------------------------------------------


def mlp(features=12, classes=3, hidden=32, last=None, act=nn.ReLU):
    layers = [nn.Linear(features, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, classes)]
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


class CNN(nn.Module):
    def __init__(self, channels=3, classes=4, bn=True, pool_stride=None):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), norm(8), nn.ReLU(), nn.MaxPool2d(2, stride=pool_stride),
            nn.Conv2d(8, 16, 3, padding=1), norm(16), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(16 * 4, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class LayerInForward(nn.Module):
    """Seed 002: a layer built inside forward(), new random weights every call."""

    def __init__(self, features=12, classes=3):
        super().__init__()
        self.fc1 = nn.Linear(features, 32)
        self.out = nn.Linear(32, classes)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        adj = nn.Linear(32, 32)  # never registered, never trained
        return self.out(torch.relu(adj(h)))


class ListLayers(nn.Module):
    """Layers kept in a plain Python list: invisible to .parameters()."""

    def __init__(self, features=12, classes=3):
        super().__init__()
        self.blocks = [nn.Linear(features, 32), nn.Linear(32, 32)]
        self.out = nn.Linear(32, classes)

    def forward(self, x):
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.out(x)


class LazyHead(nn.Module):
    """Builds its head on the first forward call: after the optimizer was created."""

    def __init__(self, features=12, classes=3):
        super().__init__()
        self.body = nn.Linear(features, 32)
        self.classes = classes
        self.head = None

    def forward(self, x):
        h = torch.relu(self.body(x))
        if self.head is None:
            self.head = nn.Linear(32, self.classes)
        return self.head(h)


class LogOfNegative(nn.Module):
    """A custom op that makes NaN: log of a value that can be negative."""

    def __init__(self, features=12, classes=3):
        super().__init__()
        self.fc = nn.Linear(features, 32)
        self.out = nn.Linear(32, classes)

    def forward(self, x):
        return self.out(torch.log(self.fc(x)))


class RawUnits(nn.Module):
    """Converts its inputs to raw units inside forward (x 1e5), then normalises after the first layer: fine in
    fp32 thanks to the LayerNorm, but the first Linear's output (and its fp16 input) passes 65504 under fp16."""

    def __init__(self, features=12, classes=3, gain=1e5):
        super().__init__()
        self.register_buffer("gain", torch.tensor(gain))
        self.fc1 = nn.Linear(features, 32)
        self.norm = nn.LayerNorm(32)
        self.out = nn.Linear(32, classes)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.fc1(x * self.gain))))


def warmup_cosine(optimizer, warmup=20, total=2000):
    import math
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))


def frozen():
    model = mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    model[-1].bias.requires_grad_(True)
    return model


def dead_relu():
    model = mlp(hidden=64)
    with torch.no_grad():
        model[0].bias.fill_(-30.0)
    return model


def saturated():
    model = mlp(act=nn.Sigmoid)
    with torch.no_grad():
        model[0].weight.mul_(40.0)
    return model


def bad_init():
    model = mlp(hidden=64)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=3.0)
    return model


def deep_sigmoid():
    layers = [nn.Linear(12, 32), nn.Sigmoid()]
    for _ in range(10):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(32, 3))


def big_bias_head():
    model = mlp()
    with torch.no_grad():
        model[-1].bias.copy_(torch.tensor([25.0, -25.0, 0.0]))
    return model


class SoftmaxInEval(nn.Module):
    """Returns probabilities in eval mode "for inference": the loss then scores them as logits."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        logits = self.net(x)
        return logits if self.training else torch.softmax(logits, dim=1)


# --- losses and steps ------------------------------------------------------------------------


def keras_categorical_crossentropy(y_pred, y_true):
    """Keras' categorical cross-entropy: normalise, clip, log; one-hot targets."""
    y_pred = y_pred / y_pred.sum(-1, keepdim=True)
    y_pred = y_pred.clamp(1e-7, 1 - 1e-7)
    onehot = nn.functional.one_hot(y_true, y_pred.shape[-1]).float()
    return -(onehot * torch.log(y_pred)).sum(-1).mean()


def handwritten_bce(logits, y):
    """Binary cross-entropy written out: finite for thousands of steps, then log(1 - p) meets p == 1.0."""
    p = torch.sigmoid(logits)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def handwritten_nll(logits, y):
    """log of a softmax: -inf once one logit leads the others by ~87."""
    return nn.functional.nll_loss(torch.log(torch.softmax(logits, dim=1)), y)


def step_without_zero_grad(model, batch, loss_fn, optimizer):
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss


class ShiftedIndex(Dataset):
    """A tabular set whose first feature is the row index (a saved pandas index)."""

    def __init__(self, n=384):
        x, self.y = blobs(n)
        self.x = torch.cat([torch.arange(n, dtype=torch.float).unsqueeze(1), x], dim=1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def with_nan(n_bad=5):
    x, y = blobs()
    x[[3, 50, 120, 200, 333][:n_bad], 2] = float("nan")
    return ds(x, y)


def shuffled(x, y):
    """Targets shuffled on their own: every label now belongs to another input."""
    return ds(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))])


def with_inf():
    x, y = blobs()
    x[::50] = float("inf")
    return ds(x, y)


def constant_feature():
    x, y = blobs()
    x[:, 4] = 3.0
    return ds(x, y)


def outlier_targets():
    x, y = regression()
    y[[7, 99, 250]] = 1e4
    return ds(x, y)


# --- the zoo ----------------------------------------------------------------------------------


DEVICE = os.environ.get("NANDOCTOR_ZOO_DEVICE", "cpu")  # e.g. cuda, to run the zoo on a GPU


class SequenceGRU(nn.Module):
    """A GRU over ``[B, T, F]`` sequences, the last step classified; ``batch_first=False`` runs it along the batch."""

    def __init__(self, batch_first=True, features=12, classes=3):
        super().__init__()
        self.gru, self.fc = nn.GRU(features, 32, batch_first=batch_first), nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.gru(x)[0][:, -1])


class ViewedGRU(nn.Module):
    """A sequence-first GRU fed ``x.view(T, B, F)`` where ``x.transpose(0, 1)`` was meant: samples interleaved."""

    def __init__(self, features=12, classes=3):
        super().__init__()
        self.gru, self.fc = nn.GRU(features, 32), nn.Linear(32, classes)

    def forward(self, x):
        b, t, f = x.shape
        return self.fc(self.gru(x.reshape(t, b, f))[0][-1])


def sequences(n=384, steps=6, seed=0):
    """Blobs repeated along ``steps`` time steps with noise: ``[n, steps, 12]``."""
    x, y = blobs(n=n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return x[:, None, :] + 0.3 * torch.randn(n, steps, x.shape[1], generator=g), y


def P(model, data, loss=None, opt=torch.optim.Adam, lr=1e-3, **kw) -> Patient:
    return Patient.from_objects(model, data, loss if loss is not None else nn.CrossEntropyLoss(), opt, lr=lr,
                                device=DEVICE, **kw)


HEALTHY: set[str] = set()

ZOO = [
    ("healthy-mlp", HEALTHY, lambda: P(mlp, ds(*blobs()))),
    ("healthy-cnn-bn", HEALTHY, lambda: P(CNN, ds(*images()), batch_size=16)),
    ("healthy-regression", HEALTHY, lambda: P(lambda: mlp(8, 1), ds(*regression()), nn.MSELoss(),
                                              torch.optim.SGD, lr=1e-2, momentum=0.9)),
    ("healthy-custom-step", HEALTHY, lambda: P(mlp, ds(*blobs()), opt=torch.optim.SGD, lr=0.05,
                                               train_step=lambda m, b, l, o: _default_step(m, b, l, o))),
    ("nll-on-raw-logits", {"nll-on-raw-logits"}, lambda: P(mlp, ds(*blobs()), nn.NLLLoss())),
    ("double-softmax", {"double-softmax"}, lambda: P(lambda: mlp(last=nn.Softmax(dim=1)), ds(*blobs()))),
    ("relu-output-keras-ce", {"bounded-output-activation"},
     lambda: P(lambda: mlp(last=nn.ReLU()), ds(*blobs()), keras_categorical_crossentropy)),
    ("bce-on-logits", {"probability-loss-on-logits"},
     lambda: P(lambda: mlp(classes=1), ds(blobs(classes=2)[0], blobs(classes=2)[1].float().unsqueeze(1)),
               nn.BCELoss())),
    ("mse-shape", {"loss-shape-mismatch"},
     lambda: P(lambda: mlp(8, 1), ds(regression()[0], regression()[1].squeeze(1)), nn.MSELoss())),
    ("initial-loss", {"initial-loss-mismatch"}, lambda: P(big_bias_head, ds(*blobs()))),
    ("loss-sum", {"loss-reduction-sum"},
     lambda: P(mlp, ds(*blobs()), nn.CrossEntropyLoss(reduction="sum"), torch.optim.SGD, lr=0.05, batch_size=64)),
    ("layer-in-forward", {"unregistered-module"}, lambda: P(LayerInForward, ds(*blobs()))),
    ("layers-in-list", {"unregistered-module"}, lambda: P(ListLayers, ds(*blobs()))),
    ("lazy-head", {"params-not-in-optimizer", "unregistered-module"}, lambda: P(LazyHead, ds(*blobs()))),
    ("frozen", {"no-trainable-params"}, lambda: P(frozen, ds(*blobs()))),
    ("no-zero-grad", {"missing-zero-grad"},
     lambda: P(mlp, ds(*blobs()), opt=torch.optim.SGD, lr=0.05, train_step=step_without_zero_grad)),
    ("pool-stride", {"pool-stride-gt-kernel"}, lambda: P(lambda: CNN(pool_stride=4), ds(*images()), batch_size=16)),
    ("dead-relu", {"dead-relu"}, lambda: P(dead_relu, ds(*blobs()))),
    ("saturated-sigmoid", {"saturated-activation"}, lambda: P(saturated, ds(*blobs()))),
    ("log-of-negative", {"nonfinite-source"}, lambda: P(LogOfNegative, ds(*blobs()))),
    ("nan-inputs", {"data-nonfinite"}, lambda: P(mlp, with_nan())),
    ("labels-out-of-range", {"target-out-of-range"}, lambda: P(mlp, ds(blobs()[0], blobs(classes=4)[1]))),
    ("float-labels", {"target-out-of-range"}, lambda: P(mlp, ds(blobs()[0], blobs()[1].float()))),
    ("unnormalized", {"data-unnormalized"}, lambda: P(mlp, ds(*blobs(scale=255.0)), opt=torch.optim.SGD, lr=0.01)),
    ("constant-feature", {"data-constant-feature"}, lambda: P(mlp, constant_feature())),
    ("index-column", {"csv-index-column"}, lambda: P(lambda: mlp(13), ShiftedIndex())),
    ("class-imbalance", {"class-imbalance"}, lambda: P(mlp, ds(*blobs(n=600, weights=[0.54, 0.45, 0.01])))),
    ("outlier-targets", {"sample-loss-outlier"}, lambda: P(lambda: mlp(8, 1), outlier_targets(), nn.MSELoss())),
    ("lr-too-high", {"lr-too-high"}, lambda: P(mlp, ds(*blobs()), opt=torch.optim.SGD, lr=20.0)),
    ("lr-too-low", {"lr-too-low"}, lambda: P(mlp, ds(*blobs()), lr=1e-8)),
    ("vanishing", {"vanishing-gradients"}, lambda: P(deep_sigmoid, ds(*blobs()), opt=torch.optim.SGD, lr=0.01)),
    ("bad-init", {"bad-init"}, lambda: P(bad_init, ds(*blobs()), opt=torch.optim.SGD, lr=0.01)),
    ("bn-batch-2", {"batchnorm-small-batch"}, lambda: P(CNN, ds(*images()), batch_size=2)),
    ("train-eval-gap", {"train-eval-gap"}, lambda: P(SoftmaxInEval, ds(*blobs()))),
    # variations on the same causes
    ("softmax-into-nll", {"nll-on-raw-logits", "double-softmax"},
     lambda: P(lambda: mlp(last=nn.Softmax(dim=1)), ds(*blobs()), nn.NLLLoss())),
    ("log-softmax-into-ce", {"double-softmax"}, lambda: P(lambda: mlp(last=nn.LogSoftmax(dim=1)), ds(*blobs()))),
    ("sigmoid-into-bce-with-logits", {"double-softmax"},
     lambda: P(lambda: mlp(classes=1, last=nn.Sigmoid()), ds(blobs()[0], (blobs()[1] == 0).float().unsqueeze(1)),
               nn.BCEWithLogitsLoss())),
    ("relu-into-ce", {"bounded-output-activation"}, lambda: P(lambda: mlp(last=nn.ReLU()), ds(*blobs()))),
    ("adam-lr-1", {"lr-too-high"}, lambda: P(mlp, ds(*blobs()), lr=1.0)),
    ("sgd-lr-1e-7", {"lr-too-low"}, lambda: P(mlp, ds(*blobs()), opt=torch.optim.SGD, lr=1e-7)),
    ("one-based-labels", {"target-out-of-range"}, lambda: P(mlp, ds(blobs()[0], blobs()[1] + 1))),
    ("inf-inputs", {"data-nonfinite"}, lambda: P(mlp, with_inf())),
    ("healthy-sgd-momentum", HEALTHY, lambda: P(mlp, ds(*blobs()), opt=torch.optim.SGD, lr=0.05, momentum=0.9)),
    ("healthy-adamw-batch-8", HEALTHY, lambda: P(mlp, ds(*blobs()), opt=torch.optim.AdamW, lr=3e-4, batch_size=8)),
    ("healthy-rmsprop", HEALTHY, lambda: P(mlp, ds(*blobs()), opt=torch.optim.RMSprop, lr=1e-3)),
    ("healthy-bce-with-logits", HEALTHY,
     lambda: P(lambda: mlp(classes=1), ds(blobs()[0], (blobs()[1] == 0).float().unsqueeze(1)), nn.BCEWithLogitsLoss())),
    ("healthy-huber", HEALTHY, lambda: P(lambda: mlp(8, 1), ds(*regression()), nn.HuberLoss())),
    ("batch-first-false-gru", {"batch-mixing"}, lambda: P(lambda: SequenceGRU(batch_first=False), ds(*sequences()))),
    ("view-instead-of-transpose", {"batch-mixing"}, lambda: P(ViewedGRU, ds(*sequences()))),
    ("healthy-sequence-gru", HEALTHY, lambda: P(SequenceGRU, ds(*sequences()))),
    ("shuffled-labels", {"no-generalisation"}, lambda: P(mlp, shuffled(*blobs(n=512)))),
    ("shuffled-labels-cnn", {"no-generalisation"}, lambda: P(CNN, shuffled(*images()), batch_size=16)),
    # the training set-ups (0.2): precision and LR schedules
    ("fp16-overflow", {"fp16-overflow"}, lambda: P(RawUnits, ds(*blobs()), precision="fp16", grad_scaler=False)),
    ("fp16-overflow-with-scaler", {"fp16-overflow"}, lambda: P(RawUnits, ds(*blobs()), precision="fp16")),
    ("steplr-per-batch", {"lr-schedule-collapse"},
     lambda: P(mlp, ds(*blobs()), opt=torch.optim.SGD, lr=0.05,
               scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.1))),
    ("onecycle-total-steps-in-epochs", {"lr-schedule-collapse"},
     lambda: P(mlp, ds(*blobs()), opt=torch.optim.SGD, lr=0.01, momentum=0.9,
               scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05, total_steps=20))),
    ("healthy-bf16", HEALTHY, lambda: P(mlp, ds(*blobs()), precision="bf16")),
    ("healthy-fp16-grad-scaler", HEALTHY, lambda: P(mlp, ds(*blobs()), precision="fp16")),
    ("healthy-onecycle", HEALTHY,
     lambda: P(mlp, ds(*blobs()), opt=torch.optim.SGD, lr=0.01, momentum=0.9,
               scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05, epochs=30,
                                           steps_per_epoch=12))),
    ("healthy-warmup-cosine", HEALTHY, lambda: P(mlp, ds(*blobs()), scheduler=warmup_cosine)),
    ("healthy-clip-accumulate", HEALTHY, lambda: P(mlp, ds(*blobs()), grad_clip=1.0, accumulate=4)),
    # numerical hazards (0.2): finite in a short run, NaN once training gets confident
    ("log-of-sigmoid", {"numerical-hazard"},
     lambda: P(lambda: mlp(classes=1), ds(blobs()[0], (blobs()[1] == 0).float().unsqueeze(1)), handwritten_bce)),
    ("log-of-softmax", {"numerical-hazard"}, lambda: P(mlp, ds(*blobs()), handwritten_nll)),
]


def _default_step(model, batch, loss_fn, optimizer):
    inputs, targets = batch
    optimizer.zero_grad()
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss


def judge(report, accepted: set[str]) -> tuple[bool, str]:
    """(right?, the top code or 'healthy')."""
    top = report.findings[0].code if report.findings else "healthy"
    if not accepted:
        return not any(f.severity == "critical" for f in report.findings), top
    return top in accepted, top
