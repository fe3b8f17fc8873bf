"""A second zoo, written from the field: each patient ports one public fault report.

``zoo.py`` holds one tiny patient per code, built to the tool's own idea of each fault; the thresholds
were tuned on it. This zoo is independent of it: every patient here was written from a public report
(a GitHub issue or pull request, a forum or StackOverflow question, a blog post) and keeps what the
reporter described (their kind of architecture, their optimizer and learning rate, their loss), at a
size a CPU trains in a few milliseconds per step. The shapes are those the zoo does not have: GRU,
LSTM and plain-RNN sequence models, small transformer encoders, a tiny U-Net, a residual block with
BatchNorm, 1-D convolutions over audio and text, point clouds, embeddings for recommendation,
siamese and pairwise models, tabular data on natural scales.

Each entry is a ``FieldPatient``:

- ``accepted``: the codes that may rank first; empty means *healthy* (no critical finding at all),
  the same rule as ``zoo.judge``.
- ``also_expected``: codes that must appear among the top three findings as well (a set-up where two
  faults meet: either may rank first, the other must follow close behind).
- ``source``: the public report the patient was written from.
- ``known_gap``: set for patients the tool is not expected to get right today (a diagnosis still
  being built); the benchmark reports them apart.

Used by ``benchmarks/bench_field.py`` (every patient, the whole battery) and by
``tests/test_field_zoo.py`` (a fast subset the tool gets right today).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from nandoctor.patient import Patient

DEVICE = os.environ.get("NANDOCTOR_ZOO_DEVICE", "cpu")
HEALTHY: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class FieldPatient:
    name: str
    accepted: frozenset[str]
    factory: Callable[[], Patient]
    source: str
    also_expected: frozenset[str] = frozenset()
    known_gap: str | None = None  # why the tool is not expected to get this one today

    @property
    def healthy(self) -> bool:
        return not self.accepted

    def expected(self) -> str:
        if self.healthy:
            return "healthy"
        text = "/".join(sorted(self.accepted))
        extra = sorted(self.also_expected - self.accepted)
        return text + (f" +{'/'.join(extra)}" if extra else "")


def judge(report, patient: FieldPatient) -> tuple[bool, str]:
    """(right?, the top code or 'healthy').

    Healthy: no critical finding. Sick: the top finding's code is accepted, and every code of
    ``also_expected`` is among the top three (the two-fault rule: either fault first, the other close).
    """
    codes = [f.code for f in report.findings]
    top = codes[0] if codes else "healthy"
    if patient.healthy:
        return not any(f.severity == "critical" for f in report.findings), top
    return top in patient.accepted and patient.also_expected <= set(codes[:3]), top


def status_of(finding) -> str:
    """confirmed / refuted (treatment-failed before 0.2) / suspected / inconclusive, whichever the record has."""
    status = getattr(finding, "status", None)
    if isinstance(status, str):
        return status
    return finding.to_json().get("status", "suspected")


# --- data -----------------------------------------------------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def teacher_table(n=512, features=10, classes=3, seed=0, weights=None):
    """Standard-normal features and labels from a random two-layer teacher (learnable, not blob-shaped).
    ``weights``: class shares; the teacher's scores are shifted until the labels match them."""
    g = _gen(seed)
    x = torch.randn(n, features, generator=g)
    w1, w2 = torch.randn(features, 16, generator=g), torch.randn(16, classes, generator=g)
    scores = torch.tanh(x @ w1) @ w2  # [n, classes]
    if weights is not None:
        for _ in range(200):  # shift the scores until each class holds its share
            y = scores.argmax(1)
            share = torch.bincount(y, minlength=classes).float() / n
            scores += 0.5 * (torch.tensor(weights) - share)
    return x, scores.argmax(1)


HOUSE_SCALES = torch.tensor([1500.0, 3.0, 40.0, 80000.0, 12.0, 2.0])  # sqft, rooms, age, lot, km, floors
HOUSE_SPREAD = torch.tensor([500.0, 1.0, 25.0, 30000.0, 8.0, 1.0])


def house_prices(n=512, seed=0):
    """Tabular regression on natural scales: six features (square feet ~1500, lot size ~80 000, ...)
    and a price in thousands (~300)."""
    g = _gen(seed)
    z = torch.randn(n, 6, generator=g)
    x = (HOUSE_SCALES + HOUSE_SPREAD * z).clamp(min=0.0)
    price = 300.0 + 60.0 * z[:, 0] + 25.0 * z[:, 1] - 20.0 * z[:, 2] + 15.0 * z[:, 3] - 30.0 * z[:, 4] \
        + 10.0 * torch.tanh(z[:, 0] * z[:, 5]) + 5.0 * torch.randn(n, generator=g)
    return x, price.unsqueeze(1)


def standardise(x):
    return (x - x.mean(0)) / x.std(0)


def prices_in_dollars():
    """dl-keras-tf #9 (Ames): the features standardised, the sale price left in dollars (~300 000)."""
    x, price = house_prices()
    return TensorDataset(standardise(x), price * 1000.0)


def wave_sequences(n=384, length=24, channels=3, classes=3, seed=0):
    """``[n, length, channels]`` sensor sequences whose class sets the frequency of a noisy sine."""
    g = _gen(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    t = torch.arange(length).float()
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    freq = (0.15 + 0.12 * y.float()).unsqueeze(1)
    base = torch.sin(freq * t + phase)  # [n, length]
    x = base.unsqueeze(2) * torch.linspace(1.0, 0.5, channels) + 0.3 * torch.randn(n, length, channels, generator=g)
    return x, y


def forecasting(n=384, length=24, seed=0):
    """Windows of a noisy two-tone signal ``[n, length, 1]`` and the value that follows each ``[n, 1]``."""
    g = _gen(seed)
    start = torch.rand(n, 1, generator=g) * 100
    t = start + torch.arange(length + 1).float()
    series = torch.sin(0.3 * t) + 0.5 * torch.sin(0.07 * t) + 0.05 * torch.randn(n, length + 1, generator=g)
    return series[:, :length].unsqueeze(2), series[:, length:]


def topic_tokens(n=512, length=20, vocab=120, classes=4, seed=0, pad_to=None):
    """Token sequences whose class is their topic (35% of tokens from the class's 12 topic words).
    ``pad_to``: lengths vary from 8 to ``length``, the rest is padding id 0."""
    g = _gen(seed)
    topics = torch.randperm(vocab - 1, generator=g)[:classes * 12].view(classes, 12) + 1
    y = torch.randint(0, classes, (n,), generator=g)
    uniform = torch.randint(1, vocab, (n, length), generator=g)
    topical = topics[y][torch.arange(n).unsqueeze(1), torch.randint(0, 12, (n, length), generator=g)]
    x = torch.where(torch.rand(n, length, generator=g) < 0.35, topical, uniform)
    if pad_to:
        lengths = torch.randint(8, length + 1, (n,), generator=g)
        x = x.masked_fill(torch.arange(length).unsqueeze(0) >= lengths.unsqueeze(1), 0)
    return x, y


def tagged_tokens(n=384, length=16, vocab=80, tags=5, seed=0):
    """Tokens ``[n, T]`` and per-token tags ``[n, T]`` (a tag depends on the word and its left neighbour)."""
    g = _gen(seed)
    word_class = torch.randint(0, tags, (vocab,), generator=g)
    table = torch.randint(0, tags, (tags, tags), generator=g)
    x = torch.randint(1, vocab, (n, length), generator=g)
    left = torch.cat([torch.zeros(n, 1, dtype=torch.long), x[:, :-1]], dim=1)
    return x, table[word_class[x], word_class[left]]


def pattern_images(n=256, channels=1, size=16, classes=6, seed=0):
    """Images of smooth class patterns (4x4 upsampled) with brightness jitter and noise, roughly unit scale."""
    g = _gen(seed)
    patterns = F.interpolate(torch.randn(classes, channels, 4, 4, generator=g), size=size, mode="bilinear",
                             align_corners=False)
    y = torch.randint(0, classes, (n,), generator=g)
    x = patterns[y] + 0.2 * torch.randn(n, 1, 1, 1, generator=g) + 0.5 * torch.randn(n, channels, size, size,
                                                                                        generator=g)
    return x, y


def as_pixels(x):
    """Unit-scale images to what a PNG decoder hands over: 0..255 pixel values."""
    return (128 + 48 * x).clamp(0, 255).round()


def disc_masks(n=160, size=32, seed=0, empty_share=0.0):
    """Grayscale ``[n, 1, S, S]`` images of bright discs on noise and their 0/1 masks ``[n, 1, S, S]``.
    ``empty_share``: images with no disc at all (an empty mask)."""
    g = _gen(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, size, size)
    for i in range(n):
        if torch.rand(1, generator=g) < empty_share:
            continue
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            cy, cx = torch.randint(6, size - 6, (2,), generator=g).tolist()
            r = int(torch.randint(3, 7, (1,), generator=g))
            masks[i] = torch.maximum(masks[i], (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float())
    images = 1.5 * masks + 0.6 * torch.randn(n, size, size, generator=g)
    return standardise_all(images).unsqueeze(1), masks.unsqueeze(1)


def standardise_all(x):
    return (x - x.mean()) / x.std()


def point_clouds(n=192, points=64, classes=3, seed=0):
    """``[n, 3, points]`` clouds sampled from a sphere, a cube's surface or a plane, jittered."""
    g = _gen(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    p = torch.randn(n, 3, points, generator=g)
    sphere = p / p.norm(dim=1, keepdim=True)
    cube = p / p.abs().amax(dim=1, keepdim=True)
    plane = torch.cat([p[:, :2], 0.05 * p[:, 2:]], dim=1).clamp(-1.5, 1.5)
    clouds = torch.stack([sphere, cube, plane], 1)[torch.arange(n), y]
    return clouds + 0.05 * torch.randn(n, 3, points, generator=g), y


def waveforms(n=256, length=256, classes=4, seed=0):
    """1-D audio-like clips ``[n, 1, length]``: the class sets the pitch of a decaying tone in noise."""
    g = _gen(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    t = torch.arange(length).float()
    pitch = (0.05 + 0.04 * y.float()).unsqueeze(1)
    onset = torch.randint(0, length // 2, (n, 1), generator=g).float()
    env = torch.exp(-((t - onset).clamp(min=0)) / 60.0) * (t >= onset).float()
    x = env * torch.sin(pitch * t) + 0.3 * torch.randn(n, length, generator=g)
    return x.unsqueeze(1), y


def char_windows(n=512, context=3, vocab=27, seed=0):
    """makemore-style character windows: ``context`` previous characters ``[n, context]`` and the next one."""
    g = _gen(seed)
    trans = torch.softmax(3.0 * torch.randn(vocab, vocab, generator=g), dim=1)
    seq = torch.empty(n + context, dtype=torch.long)
    seq[0] = 0
    for i in range(1, n + context):
        seq[i] = torch.multinomial(trans[seq[i - 1]], 1, generator=g)
    windows = torch.stack([seq[i:i + context] for i in range(n)])
    return windows, seq[context:context + n]


def ratings(n=1024, users=60, items=80, seed=0):
    """Implicit feedback: ``(user, item)`` pairs ``[n, 2]`` and a 0/1 click drawn from latent factors."""
    g = _gen(seed)
    u_f, i_f = torch.randn(users, 4, generator=g), torch.randn(items, 4, generator=g)
    pairs = torch.stack([torch.randint(0, users, (n,), generator=g), torch.randint(0, items, (n,), generator=g)], 1)
    logits = (u_f[pairs[:, 0]] * i_f[pairs[:, 1]]).sum(1)
    return pairs, (torch.rand(n, generator=g) < torch.sigmoid(2 * logits)).float().unsqueeze(1)


# --- models ---------------------------------------------------------------------------------------


class GRUClassifier(nn.Module):
    def __init__(self, channels=3, hidden=32, classes=3, head=None, bidirectional=False):
        super().__init__()
        self.gru = nn.GRU(channels, hidden, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), classes)
        self.final = head if head is not None else nn.Identity()

    def forward(self, x):
        out, _ = self.gru(x)               # [B, T, H]
        return self.final(self.fc(out[:, -1]))


class TokenGRU(nn.Module):
    """Embedding -> GRU -> last state -> classes (text classification)."""

    def __init__(self, vocab=120, embed=32, hidden=32, classes=4, final=None):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=0)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)
        self.final = final if final is not None else nn.Identity()

    def forward(self, x):
        _, h = self.gru(self.embed(x))     # h: [1, B, H]
        return self.final(self.fc(h[-1]))


class LSTMRegressor(nn.Module):
    def __init__(self, channels=1, hidden=32, out=1, final=None, layers=1):
        super().__init__()
        self.lstm = nn.LSTM(channels, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, out)
        self.final = final if final is not None else nn.Identity()

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.final(self.fc(out[:, -1]))


class Tagger(nn.Module):
    """Embedding -> (Bi)GRU or LSTM -> per-token tags, returned ``[B, tags, T]`` for CrossEntropyLoss."""

    def __init__(self, vocab=80, tags=5, hidden=32, cell=nn.GRU):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32, padding_idx=0)
        self.rnn = cell(32, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, tags)

    def forward(self, x):
        h, _ = self.rnn(self.embed(x))
        return self.fc(h).transpose(1, 2)


class TinyEncoder(nn.Module):
    """Embedding + learned positions -> ``nn.TransformerEncoder`` -> mean over tokens -> classes."""

    def __init__(self, vocab=120, length=20, width=32, heads=4, layers=1, classes=4, final=None,
                 batch_first=True, pad_mask=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(0.02 * torch.randn(1, length, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.fc = nn.Linear(width, classes)
        self.final = final if final is not None else nn.Identity()
        self.pad_mask = pad_mask

    def forward(self, x):
        h = self.embed(x) + self.pos[:, :x.shape[1]]
        h = self.encoder(h, src_key_padding_mask=(x == 0) if self.pad_mask else None)
        return self.final(self.fc(h.mean(dim=1)))


def conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # the ResNet projection: a 1x1 convolution at stride 2, by design
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetMini(nn.Module):
    """A 3x3 stem, two residual blocks (the second downsamples), global pooling, a linear head."""

    def __init__(self, channels=1, classes=6, width=8, out=None):
        super().__init__()
        self.stem = conv_bn(channels, width)
        self.blocks = nn.Sequential(ResBlock(width, width, 1), ResBlock(width, 2 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes if out is None else out)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


class LeNet(nn.Module):
    """LeNet-5 style, no normalisation: conv-relu-pool twice, two linear layers."""

    def __init__(self, channels=1, classes=6, size=16, act=nn.ReLU):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 6, 5, padding=2), act(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 12, 5, padding=2), act(), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Linear(12 * (size // 4) ** 2, 48), act(), nn.Linear(48, classes))

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def double_conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class TinyUNet(nn.Module):
    """Two downsamplings (32 -> 8), a bottleneck, two transposed-conv upsamplings with skips."""

    def __init__(self, cin=1, out=1, width=8, final=None):
        super().__init__()
        self.d1, self.d2 = double_conv(cin, width), double_conv(width, 2 * width)
        self.mid = double_conv(2 * width, 4 * width)
        self.u2, self.m2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, 2), double_conv(4 * width, 2 * width)
        self.u1, self.m1 = nn.ConvTranspose2d(2 * width, width, 2, 2), double_conv(2 * width, width)
        self.out = nn.Conv2d(width, out, 1)
        self.final = final if final is not None else nn.Identity()

    def forward(self, x):
        s1 = self.d1(x)
        s2 = self.d2(F.max_pool2d(s1, 2))
        m = self.mid(F.max_pool2d(s2, 2))
        x = self.m2(torch.cat([self.u2(m), s2], 1))
        x = self.m1(torch.cat([self.u1(x), s1], 1))
        return self.final(self.out(x))


class PointNet(nn.Module):
    """Shared per-point MLP (Conv1d k=1 + BatchNorm1d), max over points, a linear head."""

    def __init__(self, classes=3, bn_momentum=0.1):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv1d(3, 32, 1), nn.BatchNorm1d(32, momentum=bn_momentum), nn.ReLU(),
                                 nn.Conv1d(32, 64, 1), nn.BatchNorm1d(64, momentum=bn_momentum), nn.ReLU())
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(self.mlp(x).amax(dim=2))


class AudioCNN(nn.Module):
    """1-D convolutions over a waveform, pooled, a linear head."""

    def __init__(self, classes=4, pool_stride=None):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(1, 16, 9, padding=4), nn.BatchNorm1d(16), nn.ReLU(),
                                 nn.MaxPool1d(2, stride=pool_stride),
                                 nn.Conv1d(16, 32, 9, padding=4), nn.BatchNorm1d(32), nn.ReLU(),
                                 nn.AdaptiveAvgPool1d(4))
        self.fc = nn.Linear(32 * 4, classes)

    def forward(self, x):
        return self.fc(self.net(x).flatten(1))


def mlp(features, out, hidden=64, depth=2, act=nn.ReLU, dropout=0.0, final=None):
    layers, width = [], features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), act()] + ([nn.Dropout(dropout)] if dropout else [])
        width = hidden
    layers.append(nn.Linear(width, out))
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


# --- the patients' own code, as reported -------------------------------------------------------------


def P(model, data, loss=None, opt=torch.optim.Adam, lr=1e-3, **kw) -> Patient:
    return Patient.from_objects(model, data, loss if loss is not None else nn.CrossEntropyLoss(), opt, lr=lr,
                                device=DEVICE, **kw)


def with_optimizer(base: Patient, make, name: str, **kwargs) -> Patient:
    """``from_objects`` takes optimizer classes; an optimizer *function* (one that picks the parameters
    itself, as a user's script does) goes into the dataclass directly."""
    return dataclasses.replace(base, optimizer_cls=make, optimizer_kwargs=kwargs, model_name=name)


def step_without_zero_grad(model, batch, loss_fn, optimizer):
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss


def step_sum_without_zero_grad(model, batch, loss_fn, optimizer):
    """Introduction_to_Machine_Learning #55: zero_grad after step, and here never reached at all;
    the loss summed over the batch."""
    inputs, targets = batch
    loss = F.mse_loss(model(inputs), targets, reduction="sum")
    loss.backward()
    optimizer.step()
    return loss


# data-nonfinite


def sensor_readings_with_gaps():
    """tsai #506: sensor windows where a dropped reading is stored as NaN."""
    x, y = forecasting()
    x[[5, 77, 140, 260], 10:13, 0] = float("nan")
    return TensorDataset(x, y)


def per_image_standardised(images):
    """deepcell-toolbox #72: each image divided by its own standard deviation; a blank (constant) frame
    has std 0 and becomes NaN."""
    return (images - images.mean((1, 2, 3), keepdim=True)) / images.std((1, 2, 3), keepdim=True)


def frames_with_blanks():
    x, y = pattern_images(n=256, channels=3)
    x[[9, 100, 201]] = 0.7  # dropped camera frames: one flat grey value
    return TensorDataset(per_image_standardised(x), y)


# target-out-of-range


def unet_masks_0_255_float():
    """Pytorch-Medical-Segmentation #8: PNG masks read as 0/255 floats into BCEWithLogitsLoss, which takes any
    float target: the loss goes below zero without bound."""
    images, masks = disc_masks()
    return TensorDataset(images, masks * 255.0)


def unet_masks_0_255():
    """Pytorch-UNet #291: masks read as greyscale 0/255, not class indices 0/1."""
    images, masks = disc_masks()
    return TensorDataset(images, (masks.squeeze(1) * 255).long())


# data-constant-feature


def constant_sensor_table():
    """fastai #889: a sensor column that never changes in this extract, standardised with an epsilon guard."""
    x, y = teacher_table(n=512, features=9, seed=3)
    x = torch.cat([x[:, :4], torch.full((512, 1), 20.0), x[:, 4:]], 1)
    return TensorDataset((x - x.mean(0)) / (x.std(0) + 1e-8), y)


def dry_period_fields():
    """neural-lam #136: gridded weather fields as channels; the rain-rate channel is 0 all through a dry
    period. Regression of the next hour's temperature field mean."""
    g = _gen(5)
    n = 192
    temp = torch.randn(n, 1, 16, 16, generator=g)
    wind = torch.randn(n, 1, 16, 16, generator=g)
    rain = torch.zeros(n, 1, 16, 16)
    x = torch.cat([temp, wind, rain], 1)
    y = (temp.mean((1, 2, 3)) + 0.5 * wind.mean((1, 2, 3))).unsqueeze(1) * 4
    return TensorDataset(x, y)


# csv-index-column


def saved_index_prices():
    """pandas #9677: ``to_csv()`` writes the index, ``read_csv()`` brings it back as ``Unnamed: 0``."""
    x, y = house_prices()
    x = standardise(x)
    return TensorDataset(torch.cat([torch.arange(len(x)).float().unsqueeze(1), x], 1), (y - 300) / 60)


def shuffled_then_saved():
    """feature-selector #2: the frame was shuffled (``df.sample(frac=1)``) and then saved with its index:
    the "serial numbers" column is a permutation of the row numbers, not a counter in file order."""
    x, y = teacher_table(n=512, features=8, seed=4)
    order = torch.randperm(512, generator=_gen(9))
    return TensorDataset(torch.cat([order.float().unsqueeze(1), x[order]], 1), y[order])


# sample-loss-outlier


def sentinel_targets():
    """A forecasting set where a missing target is stored as the sentinel -9999 (a few rows)."""
    x, y = forecasting()
    y[[12, 150, 300]] = -9999.0
    return TensorDataset(x, y)


def garbage_images():
    """mistral #115 ("bad batches where the data is garbage"): a few 16-bit scans, 0..65535, among
    unit-scale images."""
    x, y = pattern_images(n=256, channels=1)
    x[[17, 130]] = torch.rand(2, 1, 16, 16, generator=_gen(2)) * 65535
    return TensorDataset(x, y)


# nll-on-raw-logits


class CharRNN(nn.Module):
    """pytorch #2623: the char-RNN tutorial's cell (i2h, i2o on [input, hidden]) with ``nn.Softmax``
    where the tutorial has ``LogSoftmax``; NLLLoss then goes negative."""

    def __init__(self, channels=3, hidden=32, classes=3):
        super().__init__()
        self.hidden = hidden
        self.i2h = nn.Linear(channels + hidden, hidden)
        self.i2o = nn.Linear(channels + hidden, classes)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            combined = torch.cat([x[:, t], h], 1)
            h, out = torch.tanh(self.i2h(combined)), self.i2o(combined)
        return self.softmax(out)


# double-softmax / bounded outputs


class DotRecommender(nn.Module):
    """daisyRec #15: user and item embeddings, a dot product and ``torch.sigmoid`` before
    ``BCEWithLogitsLoss`` (which applies the sigmoid again)."""

    def __init__(self, users=60, items=80, dim=16, sigmoid=True):
        super().__init__()
        self.users, self.items = nn.Embedding(users, dim), nn.Embedding(items, dim)
        self.bias = nn.Parameter(torch.zeros(1))
        self.sigmoid = sigmoid

    def forward(self, pairs):
        score = (self.users(pairs[:, 0]) * self.items(pairs[:, 1])).sum(1, keepdim=True) + self.bias
        return torch.sigmoid(score) if self.sigmoid else score


class PairEncoder(nn.Module):
    """SciCo #2: a pair classifier over the tokens of two mentions, whose logits are softmaxed before
    ``CrossEntropyLoss``."""

    def __init__(self, softmax=True):
        super().__init__()
        self.encoder = TinyEncoder(length=20, classes=4)
        self.softmax = softmax

    def forward(self, x):
        logits = self.encoder(x)
        return torch.softmax(logits, dim=-1) if self.softmax else logits


def standardised_log_counts():
    """MSCNN #3 (crowd counting): images of blobs and the count, log-transformed and standardised (the
    target is negative for sparse scenes), regressed with a ReLU output."""
    g = _gen(6)
    n = 192
    x, counts = torch.zeros(n, 1, 16, 16), torch.randint(0, 12, (n,), generator=g)
    for i in range(n):
        for _ in range(int(counts[i])):
            r, c = torch.randint(1, 15, (2,), generator=g).tolist()
            x[i, 0, r - 1:r + 2, c - 1:c + 2] += 1.0
    x = x + 0.2 * torch.randn(n, 1, 16, 16, generator=g)
    target = torch.log1p(counts.float())
    return TensorDataset(x, ((target - target.mean()) / target.std()).unsqueeze(1))


def standardised_forecasting():
    """ProteomicsML #203: a standardised regression target (negative half the time) behind a ReLU."""
    x, y = forecasting()
    return TensorDataset(x, (y - y.mean()) / y.std())


# initial-loss-mismatch / bad init


class CharMLP(nn.Module):
    """makemore (part 3): embeddings of 3 characters, a tanh hidden layer and an output layer drawn
    from ``torch.randn`` without scaling: the first loss is ~25 against ln(27) = 3.3."""

    def __init__(self, vocab=27, context=3, embed=10, hidden=64, scale_out=1.0, bias_out=1.0):
        super().__init__()
        self.C = nn.Parameter(torch.randn(vocab, embed))
        self.W1 = nn.Parameter(torch.randn(context * embed, hidden) * (5 / 3) / (context * embed) ** 0.5)
        self.b1 = nn.Parameter(torch.randn(hidden) * 0.01)
        self.W2 = nn.Parameter(torch.randn(hidden, vocab) * scale_out)
        self.b2 = nn.Parameter(torch.randn(vocab) * bias_out)

    def forward(self, idx):
        h = torch.tanh(self.C[idx].flatten(1) @ self.W1 + self.b1)
        return h @ self.W2 + self.b2


def resnet_head_std_1():
    """Karpathy's recipe ("verify loss @ init"): a head re-initialised with ``normal_(std=1)``: logits of
    a few units each, a first loss far above ln(6)."""
    model = ResNetMini(channels=1, classes=6, width=16)
    nn.init.normal_(model.fc.weight, std=1.0)
    nn.init.normal_(model.fc.bias, std=1.0)
    return model


# loss-shape-mismatch


class StepwiseForecaster(nn.Module):
    """xlstm #4: a prediction for every time step ``[B, T, 1]`` compared with the one target ``[B, 1, 1]``."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(1, 32, batch_first=True)
        self.fc = nn.Linear(32, 1)

    def forward(self, x):
        return self.fc(self.lstm(x)[0])


def forecasting_one_target_per_window():
    x, y = forecasting()
    return TensorDataset(x, y.unsqueeze(1))


def pinn_grid():
    """NeuralSolvers #20: an initial-condition fit on an evenly spaced grid, u(x) = sin(pi x) exp(-x^2),
    targets ``[N]`` against predictions ``[N, 1]``."""
    x = torch.linspace(-1, 1, 400).unsqueeze(1)
    return TensorDataset(x, (torch.sin(math.pi * x) * torch.exp(-x ** 2)).squeeze(1))


class SqueezedRegressionHead(nn.Module):
    """FARM #229: a text regression head whose logits are squeezed to ``[B]`` against labels ``[B, 1]``."""

    def __init__(self):
        super().__init__()
        self.encoder = TinyEncoder(length=20, classes=1)

    def forward(self, x):
        return self.encoder(x).squeeze(-1)


def text_scores():
    """Token sequences and a score 0..16 that grows with the count of the first topic's words."""
    x, y = topic_tokens(n=512, classes=4, seed=7)
    score = (y.float() * 4 + torch.rand(512, generator=_gen(3)) * 4).unsqueeze(1)
    return TensorDataset(x, score)


# unregistered-module / params-not-in-optimizer / no-trainable-params


class EncoderLinearInForward(nn.Module):
    """nlp-tutorial #29: the attention's output projection created with ``nn.Linear(...)`` inside
    ``forward``: new random weights every call, never trained."""

    def __init__(self, vocab=120, width=32, heads=4, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        h = self.embed(x)
        b, t, c = h.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(h).split(c, 2))
        ctx = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c)
        out = nn.Linear(c, c)(ctx)  # the bug, as written in the tutorial
        return self.fc(self.norm(h + out).mean(1))


class TextCNNConvList(nn.Module):
    """pytorch #1053: the filters of a text CNN kept in a plain Python list."""

    def __init__(self, vocab=120, embed=32, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.conv1d = [nn.Conv1d(embed, 16, 3), nn.Conv1d(embed, 16, 4), nn.Conv1d(embed, 16, 5)]
        self.fc = nn.Linear(48, classes)

    def forward(self, x):
        h = self.embed(x).transpose(1, 2)  # [B, E, T]
        return self.fc(torch.cat([F.relu(conv(h)).amax(2) for conv in self.conv1d], 1))


def adam_without_head(params, lr=1e-3):
    """HVPNeT #5: the parameter groups are built for the encoder; the classifier's weight and bias (the
    last two tensors) are never appended."""
    return torch.optim.Adam(list(params)[:-2], lr=lr)


class DetectorCorrector(nn.Module):
    """SoftMaskedBert #7: a GRU detector that softly masks suspicious tokens, and a transformer corrector."""

    def __init__(self, vocab=120, width=32, classes=4):
        super().__init__()
        self.corrector = TinyEncoder(vocab=vocab, width=width, classes=classes)
        self.detector = nn.GRU(width, 16, batch_first=True)
        self.detector_fc = nn.Linear(16, 1)
        self.mask_embedding = nn.Parameter(torch.zeros(width))

    def forward(self, x):
        e = self.corrector.embed(x)
        p = torch.sigmoid(self.detector_fc(self.detector(e)[0]))        # [B, T, 1]
        h = p * self.mask_embedding + (1 - p) * e + self.corrector.pos[:, :x.shape[1]]
        return self.corrector.fc(self.corrector.encoder(h).mean(1))


def adam_corrector_only(params, lr=1e-3):
    """Only the corrector's parameters reach the optimizer (they come first in ``parameters()``); the
    detector's GRU, its head and the mask embedding are left out."""
    params = list(params)
    corrector = len(list(TinyEncoder(width=32, classes=4).parameters()))
    return torch.optim.Adam(params[:corrector], lr=lr)


def frozen_lane_net():
    """Ultra-Fast-Lane-Detection #282: ``for param in model.parameters(): param.requires_grad = False``
    over the whole model, head included (backward then raises)."""
    model = ResNetMini(channels=1, width=16, out=4)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class ScaledCosineHead(nn.Module):
    """easy-few-shot-learning #40: a backbone and a head frozen for fine-tuning; only a learnable logit
    temperature is left trainable, so the loss barely moves."""

    def __init__(self):
        super().__init__()
        self.encoder = TinyEncoder(classes=4)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.temperature = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.encoder(x) * self.temperature


def trainable_only(params, lr=1e-3):
    """The transfer-learning tutorial's optimizer: only the parameters that still require grad."""
    return torch.optim.SGD([p for p in params if p.requires_grad], lr=lr, momentum=0.9)


# pool-stride-gt-kernel


class StrideFourConvNet(nn.Module):
    """yolo_v1_pytorch #7: a stride mistaken for a size, a 3x3 convolution at stride 4."""

    def __init__(self, classes=6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, stride=4, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


# vanishing / saturation / dead units


def deep_sigmoid_dnn(features=40, classes=6, layers=7, width=128):
    """CNTK #476: a DNN of seven sigmoid hidden layers that trained at six; the seventh stalls it."""
    mods, w = [], features
    for _ in range(layers):
        mods += [nn.Linear(w, width), nn.Sigmoid()]
        w = width
    return nn.Sequential(*mods, nn.Linear(w, classes))


def speech_frames(n=512, features=40, classes=6, seed=0):
    x, y = teacher_table(n=n, features=features, classes=classes, seed=seed)
    return TensorDataset(x, y)


class SigmoidConvNet(nn.Module):
    """Receptive-Field-in-Pytorch #3: eight conv layers with sigmoid activations, no normalisation."""

    def __init__(self, classes=6):
        super().__init__()
        layers, c = [], 1
        for _ in range(8):
            layers += [nn.Conv2d(c, 8, 3, padding=1), nn.Sigmoid()]
            c = 8
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def normal_init(model, std):
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.normal_(m.bias, std=std)
        if isinstance(m, (nn.GRU, nn.LSTM)):
            for name, p in m.named_parameters():
                nn.init.normal_(p, std=std)
    return model


class AcousticModel(nn.Module):
    """DeepSpeech #138: three dense layers and a recurrent layer over feature frames, every weight and
    bias drawn from N(0, 1) instead of the framework's scaled default."""

    def __init__(self, channels=3, classes=3):
        super().__init__()
        self.dense = nn.Sequential(nn.Linear(channels, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                   nn.Linear(64, 64), nn.ReLU())
        self.gru = nn.GRU(64, 64, batch_first=True)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(self.gru(self.dense(x))[0][:, -1])


def bcd_table():
    """The StackOverflow BCD-to-7-segment network: 4 inputs in {-1, 1}, 7 tanh outputs in {-1, 1}."""
    digits = torch.arange(10)
    bits = torch.stack([(digits >> k) & 1 for k in range(3, -1, -1)], 1).float() * 2 - 1
    segments = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 0], [1, 1, 0, 1, 1, 0, 1],
                             [1, 1, 1, 1, 0, 0, 1], [0, 1, 1, 0, 0, 1, 1], [1, 0, 1, 1, 0, 1, 1],
                             [1, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 0, 1, 1]]).float() * 2 - 1
    reps = 32
    g = _gen(8)
    return TensorDataset(bits.repeat(reps, 1) + 0.05 * torch.randn(10 * reps, 4, generator=g),
                         segments.repeat(reps, 1))


def bcd_net():
    return normal_init(nn.Sequential(nn.Linear(4, 20), nn.Tanh(), nn.Linear(20, 7), nn.Tanh()), std=4.0)


def raw_sensor_sequences():
    """Sensor sequences in raw units (a pressure around 1000 hPa with swings of tens)."""
    x, y = wave_sequences()
    return TensorDataset(1000.0 + 40.0 * x, y)


class TanhFrontLSTM(nn.Module):
    """A tanh feature layer in front of an LSTM classifier, fed raw sensor units."""

    def __init__(self, channels=3, classes=3):
        super().__init__()
        self.front = nn.Sequential(nn.Linear(channels, 32), nn.Tanh())
        self.lstm = nn.LSTM(32, 32, batch_first=True)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.lstm(self.front(x))[0][:, -1])


class RowLSTM(nn.Module):
    """yunjey/pytorch-tutorial #196: an image read row by row by an LSTM, the last step classified. Built with
    ``batch_first=False`` and fed ``[B, rows, width]``: the LSTM runs along the batch. ``transpose=True`` is the
    same model done right for a sequence-first LSTM: ``[rows, B, width]`` in, the last row's output out."""

    def __init__(self, width=16, hidden=64, classes=6, batch_first=False, transpose=False):
        super().__init__()
        self.lstm = nn.LSTM(width, hidden, batch_first=batch_first)
        self.fc = nn.Linear(hidden, classes)
        self.transpose = transpose

    def forward(self, x):
        x = x.squeeze(1)                                   # [B, rows, width]
        if self.transpose:
            return self.fc(self.lstm(x.transpose(0, 1))[0][-1])
        return self.fc(self.lstm(x)[0][:, -1, :])


def bag_of_words(n=512, vocab=200, classes=4, seed=0):
    """Topic-model style word-count vectors ``[n, vocab]`` (counts 0..~6) and the document's topic."""
    x, y = topic_tokens(n=n, length=40, vocab=vocab, classes=classes, seed=seed)
    counts = torch.zeros(n, vocab).scatter_add_(1, x, torch.ones_like(x, dtype=torch.float))
    return TensorDataset(counts, y)


def listings_with_sentinel():
    """Liam0205 #262 (Airbnb search): a feature far outside its usual range in some rows (a price with a
    -10000 "unknown" code) pushes ReLU inputs negative for everything that follows."""
    x, y = teacher_table(n=512, features=8, seed=11)
    x[::7, 2] = -10000.0
    return TensorDataset(x, y)


# numerical hazards (0.2)


def preference_pairs(n=384, features=12, seed=0):
    """Pairs ``[n, 2, F]`` of (chosen, rejected) responses as feature vectors; the chosen one scores higher
    under a hidden linear reward."""
    g = _gen(seed)
    w = torch.randn(features, generator=g)
    a, b = torch.randn(n, features, generator=g), torch.randn(n, features, generator=g)
    chosen = torch.where(((a @ w) > (b @ w)).unsqueeze(1), a, b)
    rejected = torch.where(((a @ w) > (b @ w)).unsqueeze(1), b, a)
    return TensorDataset(torch.stack([chosen, rejected], 1), torch.zeros(n))


class RewardModel(nn.Module):
    def __init__(self, features=12):
        super().__init__()
        self.score = mlp(features, 1, hidden=32)

    def forward(self, pair):
        return self.score(pair).squeeze(-1)  # [B, 2]


def pairwise_log_sigmoid(scores, _):
    """DeepSpeedExamples #501: ``-log(sigmoid(chosen - rejected))``; ``sigmoid`` underflows to 0 for a
    margin below about -88 and the log returns inf."""
    return -torch.log(torch.sigmoid(scores[:, 0] - scores[:, 1])).mean()


def dice_loss_no_smooth(logits, masks):
    """nasa/delta #115: a soft Dice loss without an epsilon: an empty mask with an empty prediction is 0/0."""
    p = torch.sigmoid(logits)
    inter = (p * masks).sum((1, 2, 3))
    return (1 - 2 * inter / (p.sum((1, 2, 3)) + masks.sum((1, 2, 3)))).mean()


def hard_zero_dice_loss(logits, masks):
    """The same Dice loss on a thresholded prediction passed straight through (``p = (p > 0.5) + p - p.detach()``)."""
    p = torch.sigmoid(logits)
    p = (p > 0.5).float() + p - p.detach()
    inter = (p * masks).sum((1, 2, 3))
    return (1 - 2 * inter / (p.sum((1, 2, 3)) + masks.sum((1, 2, 3)))).mean()


def siamese_pairs(n=384, features=16, seed=0):
    """Pairs ``[n, 2, F]`` and 1 for "same", 0 for "different"; a third of the same-pairs are the very same
    sample twice (duplicates in the gallery)."""
    g = _gen(seed)
    a = torch.randn(n, features, generator=g)
    same = torch.rand(n, generator=g) < 0.5
    b = torch.where(same.unsqueeze(1), a + 0.1 * torch.randn(n, features, generator=g),
                    torch.randn(n, features, generator=g))
    dup = same.clone()
    dup[1::3] = False  # two thirds of the same-pairs keep their small difference
    b[dup] = a[dup]
    return TensorDataset(torch.stack([a, b], 1), same.float())


class SiameseNet(nn.Module):
    def __init__(self, features=16):
        super().__init__()
        self.embed = mlp(features, 8, hidden=32)

    def forward(self, pair):
        e = self.embed(pair)                                  # [B, 2, 8]
        return torch.sqrt(((e[:, 0] - e[:, 1]) ** 2).sum(1))  # keras #9097: sqrt of a squared distance


def contrastive(distance, same, margin=1.0):
    return (same * distance ** 2 + (1 - same) * F.relu(margin - distance) ** 2).mean()


# fp16


class RawUnitsEncoder(nn.Module):
    """pytorch #40497: attention over raw sensor values (~1000), written out by hand as in the report: under fp16
    autocast the matmul of the projected queries and keys passes 65504, and the softmax that follows turns the
    inf into NaN at the first step. In fp32 (or bf16) the scores are large but finite."""

    def __init__(self, channels=3, width=32, classes=3):
        super().__init__()
        self.proj = nn.Linear(channels, width)
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        h = self.proj(x)
        scores = torch.matmul(self.q(h), self.k(h).transpose(-2, -1)) / math.sqrt(h.shape[-1])
        h = self.norm(h + torch.matmul(torch.softmax(scores, dim=-1), self.v(h)))
        return self.fc(h.mean(1))


def sixteen_bit_denoising():
    """ect #13-like: 16-bit microscopy frames (0..65535) denoised by a small CNN, fp16 without a scaler."""
    g = _gen(12)
    clean = F.interpolate(torch.rand(128, 1, 4, 4, generator=g), size=16, mode="bilinear", align_corners=False)
    noisy = clean + 0.1 * torch.randn(128, 1, 16, 16, generator=g)
    return TensorDataset(noisy * 60000, clean * 60000)


def denoiser():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 1, 3, padding=1))


# lr schedules


def linear_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=3):
    """transformers' ``get_linear_schedule_with_warmup``, given the number of *epochs* (3) as
    ``num_training_steps`` (causal-bert-pytorch #9): the LR is 0 from the third step on."""
    def lr_lambda(step):
        if step < num_warmup_steps:
            return (step + 1) / num_warmup_steps
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def noam(optimizer, width=32, warmup=40):
    """The Transformer paper's schedule (tensor2tensor #280), scaled so its peak is the optimizer's LR."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup ** 0.5 * min((s + 1) ** -0.5, (s + 1) * warmup ** -1.5))


# cannot-overfit


class ChannelNormLSTM(nn.Module):
    """A LayerNorm over the channel axis of a one-channel series (``nn.LayerNorm(1)`` on ``[B, T, 1]``):
    each value is normalised against itself and becomes 0, so the output cannot depend on the input."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(1)
        self.lstm = nn.LSTM(1, 32, batch_first=True)
        self.fc = nn.Linear(32, 1)

    def forward(self, x):
        return self.fc(self.lstm(self.norm(x))[0][:, -1])


# healthy-looking


class FlowBatchNorm(nn.Module):
    """The batch-norm layer of a RealNVP flow: batch statistics in train(), running ones in eval() (momentum in
    the flow papers' convention: the share of the old statistic kept), and the log-determinant it adds."""

    def __init__(self, dim, momentum=0.9, eps=1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x):
        if self.training:
            mean, var = x.mean(0), x.var(0)
            with torch.no_grad():
                self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * mean)
                self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var)
        else:
            mean, var = self.running_mean, self.running_var
        y = self.log_gamma.exp() * (x - mean) / torch.sqrt(var + self.eps) + self.beta
        return y, (self.log_gamma - 0.5 * torch.log(var + self.eps)).expand_as(x)


class AffineCoupling(nn.Module):
    """RealNVP's affine coupling: the masked half of the input sets a scale (tanh net) and a shift (ReLU net)
    for the other half."""

    def __init__(self, dim, hidden, mask):
        super().__init__()
        self.register_buffer("mask", mask)
        self.scale = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                   nn.Linear(hidden, dim))
        self.shift = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                   nn.Linear(hidden, dim))

    def forward(self, x):
        kept = x * self.mask
        s, t = self.scale(kept), self.shift(kept)
        return kept + (1 - self.mask) * (x - t) * torch.exp(-s), -(1 - self.mask) * s


class RealNVP(nn.Module):
    """Coupling and batch-norm blocks, alternating masks; returns each sample's negative log-likelihood under
    a standard normal base."""

    def __init__(self, dim=2, blocks=5, hidden=64):
        super().__init__()
        mask, layers = (torch.arange(dim) % 2).float(), []
        for _ in range(blocks):
            layers += [AffineCoupling(dim, hidden, mask), FlowBatchNorm(dim)]
            mask = 1 - mask
        self.blocks = nn.ModuleList(layers)

    def forward(self, x):
        log_det = 0.0
        for block in self.blocks:
            x, ld = block(x)
            log_det = log_det + ld
        return (0.5 * x ** 2 + 0.5 * math.log(2 * math.pi) - log_det).sum(1)


class MeanNLL(nn.Module):
    """A density model's loss: the mean of the per-sample negative log-likelihoods (no target)."""

    def forward(self, nll, target):
        return nll.mean()


def two_moons(n=1024, noise=0.05, seed=0) -> TensorDataset:
    """Points on two interleaved half circles (no labels: a density to fit); the target is a dummy zero."""
    g = _gen(seed)
    t = math.pi * torch.rand(n, generator=g)
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    return TensorDataset(torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=g), torch.zeros(n))


class StandardisedRegressor(nn.Module):
    """Inputs and the target standardised inside the model with statistics stored as buffers (what a
    scaler fitted on the training set does): the raw data is in natural units, the network is not."""

    def __init__(self, mean_x, std_x, mean_y, std_y):
        super().__init__()
        for name, value in (("mean_x", mean_x), ("std_x", std_x), ("mean_y", mean_y), ("std_y", std_y)):
            self.register_buffer(name, value)
        self.net = mlp(6, 1, hidden=64)

    def forward(self, x):
        return self.net((x - self.mean_x) / self.std_x) * self.std_y + self.mean_y


def standardised_regressor():
    x, y = house_prices()
    return StandardisedRegressor(x.mean(0), x.std(0), y.mean(0), y.std(0))


def frozen_backbone_model():
    """The transfer-learning tutorial's "ConvNet as fixed feature extractor": every backbone parameter
    frozen on purpose, a new trainable head."""
    torch.manual_seed(123)
    backbone = ResNetMini(channels=1, classes=6, width=16)  # stands in for the pretrained weights
    for p in backbone.parameters():
        p.requires_grad_(False)
    backbone.fc = nn.Linear(32, 6)
    return backbone


class PaddedTagger(nn.Module):
    def __init__(self, vocab=80, tags=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32, padding_idx=0)
        self.gru = nn.GRU(32, 32, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(64, tags)

    def forward(self, x):
        return self.fc(self.gru(self.embed(x))[0]).transpose(1, 2)  # [B, tags, T]


class VariableLengthTags(Dataset):
    """Sentences of 5..16 tokens; ``pad_tags`` pads tokens with 0 and tags with -100 (ignore_index)."""

    def __init__(self):
        self.x, self.y = tagged_tokens()
        self.lengths = torch.randint(5, 17, (len(self.x),), generator=_gen(13))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        n = int(self.lengths[i])
        return self.x[i, :n], self.y[i, :n]


def pad_tags(batch):
    tokens = nn.utils.rnn.pad_sequence([b[0] for b in batch], batch_first=True, padding_value=0)
    tags = nn.utils.rnn.pad_sequence([b[1] for b in batch], batch_first=True, padding_value=-100)
    return tokens, tags


def background_heavy_masks():
    """Segmentation where ~93% of the pixels are background, as in most medical masks (Pytorch-UNet #176)."""
    images, masks = disc_masks(n=160, seed=4)
    return TensorDataset(images, masks)


def conv_autoencoder():
    return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                         nn.ConvTranspose2d(16, 8, 2, 2), nn.ReLU(), nn.ConvTranspose2d(8, 1, 2, 2), nn.Sigmoid())


def unit_images():
    x, _ = pattern_images(n=256)
    x = (x - x.min()) / (x.max() - x.min())
    return TensorDataset(x, x.clone())


def rare_positive_table(ratio=10):
    x, y = teacher_table(n=640, features=10, classes=2, seed=14, weights=[ratio / (ratio + 1), 1 / (ratio + 1)])
    return TensorDataset(x, y.float().unsqueeze(1))


# --- more of the patients' own code ------------------------------------------------------------------


def imbalanced_waves():
    """neural-trees #75: one class holding 6% of the sequences."""
    x, y = wave_sequences(n=600, seed=19)
    keep = (y != 2) | (torch.rand(600, generator=_gen(20)) < 0.09)
    return x[keep], y[keep]


def imbalanced_topics():
    """SciCo: most mention pairs are unrelated; the rarest relation is ~4% of the pairs."""
    x, y = topic_tokens(n=700, seed=21)
    keep = (y != 3) | (torch.rand(700, generator=_gen(22)) < 0.12)
    return x[keep], y[keep]


def line_with_offset(n=256):
    """gentle_tensorflow #7: y = 2x + 10 with x in 0..1; at learn_rate 1e-6 the bias creeps towards 10."""
    g = _gen(23)
    x = torch.rand(n, 1, generator=g)
    return x, 2 * x + 10 + 0.05 * torch.randn(n, 1, generator=g)


class IRNN(nn.Module):
    """A ReLU RNN with the identity-initialised recurrence of Le et al. ("IRNN") over long sequences."""

    def __init__(self, channels=3, hidden=64, classes=3):
        super().__init__()
        self.rnn = nn.RNN(channels, hidden, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(1.05 * torch.eye(hidden))
            self.rnn.bias_hh_l0.zero_()
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


def irnn():
    return IRNN()


class NormFreeBlock(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.ReLU(), nn.Linear(4 * width, width))

    def forward(self, x):
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(x)


class NormFreeEncoder(nn.Module):
    """bittensor #229 ("on smaller architectures the loss explodes after some epochs"): four residual
    attention blocks with no LayerNorm at all, trained with SGD and momentum."""

    def __init__(self, vocab=120, width=32, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.Sequential(*[NormFreeBlock(width) for _ in range(4)])
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.embed(x)).mean(1))


def norm_free_encoder():
    return NormFreeEncoder()


class LogFeatureGRU(nn.Module):
    """pytorch #61118 ("3 hours to find why I get NaN"): a log-scaled feature layer, ``torch.log`` of a
    linear projection that is negative for about half its inputs."""

    def __init__(self, channels=3, classes=3):
        super().__init__()
        self.proj = nn.Linear(channels, 16)
        self.gru = nn.GRU(16, 32, batch_first=True)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.gru(torch.log(self.proj(x)))[0][:, -1])


class GeMNet(nn.Module):
    """CGD #12 (``PowBackward0 returned nan``): generalised-mean pooling ``mean(x ** p) ** (1 / p)`` over
    features that can be negative (no clamp, no ReLU before it)."""

    def __init__(self, classes=6, p=3.0):
        super().__init__()
        self.features = nn.Sequential(conv_bn(1, 16), nn.Conv2d(16, 32, 3, padding=1))  # no activation last
        self.p = nn.Parameter(torch.tensor(p))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        f = self.features(x)
        return self.fc(f.pow(self.p).mean((2, 3)).pow(1.0 / self.p))


# === a second batch of ports (more shapes per code) ===================================================

# --- no-generalisation: a validation split that is one class the training part never saw -------------


def class_ordered_images(per_class=64, classes=5, size=16, seed=31):
    """keras #8346: 2900 images per class for 5 classes, loaded folder by folder (class 0 first). Keras's
    ``validation_split=0.2`` takes the *last* 20% of the arrays, before any shuffling: exactly class 4.
    Returns (training part, validation part) as the split hands them over."""
    x, y = pattern_images(n=per_class * classes * 3, channels=3, size=size, classes=classes, seed=seed)
    keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(classes)])  # folder order
    x, y = x[keep], y[keep]
    cut = int(len(x) * 0.8)
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


class VGGLike(nn.Module):
    """The Keras docs' "VGG-like convnet": two conv-conv-pool blocks with dropout, a dense layer, dropout
    0.5 and a softmax head (here the logits, for CrossEntropyLoss)."""

    def __init__(self, channels=3, classes=5, size=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * (size // 4) ** 2, 32), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Linear(32, classes))

    def forward(self, x):
        return self.head(self.features(x))


def vgg_last_class_as_validation():
    train, val = class_ordered_images()
    return P(VGGLike, train, opt=torch.optim.SGD, lr=0.01, momentum=0.9, nesterov=True, batch_size=32, val_data=val)


# --- no-generalisation: the test inputs shuffled, their labels not ---------------------------------------


class KimTextCNN(nn.Module):
    """dennybritz/cnn-text-classification-tf: embeddings, filters of widths 3, 4 and 5 with max-over-time
    pooling, dropout 0.5 and a linear layer over the two classes."""

    def __init__(self, vocab=120, embed=32, filters=16, classes=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.convs = nn.ModuleList([nn.Conv1d(embed, filters, k) for k in (3, 4, 5)])
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * filters, classes)

    def forward(self, x):
        h = self.embed(x).transpose(1, 2)                       # [B, E, T]
        pooled = torch.cat([F.relu(conv(h)).amax(2) for conv in self.convs], 1)
        return self.fc(self.drop(pooled))


def polarity_with_shuffled_test():
    """cnn-text-classification-tf #136: the evaluation script permutes the test sentences
    (``x_test[shuffle_indices]``) and compares the predictions with ``y_test`` in its original order."""
    x, y = topic_tokens(n=768, classes=2, seed=33)
    train = TensorDataset(x[:512], y[:512])
    perm = torch.randperm(256, generator=_gen(34))
    test = TensorDataset(x[512:][perm], y[512:])  # inputs shuffled, labels left as they were
    return train, test


def text_cnn_shuffled_test_set():
    train, test = polarity_with_shuffled_test()
    return P(KimTextCNN, train, lr=1e-3, batch_size=64, val_data=test)


# --- data-constant-feature: a feature that is 0 in every function, divided by its max ----------------------


BLOCK_FEATURES = 18  # per basic block: instruction counts by kind, calls, constants, degree, ...


def basic_block_features(n=192, blocks=32, seed=35):
    """deepreflect #11: each function is a sequence of basic blocks with 18 count features each, stored
    channels-last ``[N, blocks, 18]`` as the Keras model reads them, and normalised by dividing every
    feature by its maximum over the training set. One feature (index 11) is 0 in every function of this
    extract: its maximum is 0 and the division gives 0/0 = NaN in every sample ("loss: nan - mse: nan")."""
    g = _gen(seed)
    rates = torch.rand(BLOCK_FEATURES, generator=g) * 6 + 0.5
    counts = torch.poisson(rates.expand(n, blocks, BLOCK_FEATURES).contiguous(), generator=g)
    lengths = torch.randint(blocks // 2, blocks + 1, (n,), generator=g)
    counts = counts.masked_fill((torch.arange(blocks)[None, :] >= lengths[:, None]).unsqueeze(2), 0.0)  # padding
    counts[:, :, 11] = 0.0
    x = counts / counts.amax(dim=(0, 1))
    return TensorDataset(x, x.clone())  # an autoencoder: the target is the input


def conv_block(cin, cout, k=5):
    return nn.Sequential(nn.Conv1d(cin, cout, k, padding=k // 2), nn.ReLU(), nn.Conv1d(cout, cout, k, padding=k // 2),
                         nn.ReLU())


class BlockUNet1d(nn.Module):
    """deepreflect's autoencoder: a 1-D U-Net over the basic-block axis (conv pairs, max pooling, upsampling
    with skip concatenations, he_normal init), a 1x1 convolution back to the 18 features and tanh."""

    def __init__(self, features=BLOCK_FEATURES, width=8):
        super().__init__()
        self.d1, self.d2 = conv_block(features, width), conv_block(width, 2 * width)
        self.mid = conv_block(2 * width, 4 * width)
        self.u2, self.m2 = nn.Conv1d(4 * width, 2 * width, 3, padding=1), conv_block(4 * width, 2 * width)
        self.u1, self.m1 = nn.Conv1d(2 * width, width, 3, padding=1), conv_block(2 * width, width)
        self.out = nn.Conv1d(width, features, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv1d) and m is not self.out:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x):                                # x: [B, blocks, features], channels last
        h = x.transpose(1, 2)
        s1 = self.d1(h)
        s2 = self.d2(F.max_pool1d(s1, 2))
        m = self.mid(F.max_pool1d(s2, 2))
        h = self.m2(torch.cat([F.relu(self.u2(F.interpolate(m, scale_factor=2))), s2], 1))
        h = self.m1(torch.cat([F.relu(self.u1(F.interpolate(h, scale_factor=2))), s1], 1))
        return torch.tanh(self.out(h)).transpose(1, 2)


# --- csv-index-column: the series id carried into the feature table ---------------------------------------


def tsfresh_table_with_id(series=256, length=50, seed=37):
    """tsfresh #162 ("100% classification accuracy regardless of actual time series"): the long-format frame
    handed to ``extract_features`` still had the series id as a value column, so the table got features
    of the id itself (its mean, median, minimum, maximum, sum). The series are stored class by class, so
    the id counts up with the row and tells the class. The frame is standardised column by column before
    the network (a StandardScaler), the id features with it."""
    g = _gen(seed)
    y = (torch.arange(series) >= series // 2).long()                   # files read folder by folder
    values = torch.randn(series, length, generator=g).cumsum(1) * 0.3 + torch.randn(series, 1, generator=g)
    diffs = values.diff(dim=1)
    real = torch.stack([values.mean(1), values.std(1), values.amax(1), values.amin(1), values.median(1).values,
                        (values ** 2).sum(1), diffs.abs().mean(1), (diffs > 0).float().mean(1),
                        values[:, -1] - values[:, 0]], 1)
    ids = torch.arange(series).float()
    leaked = torch.stack([ids, ids, ids, ids, ids * length], 1)   # id__mean, __median, __minimum, __maximum, __sum
    table = torch.cat([real, leaked], 1)
    return TensorDataset((table - table.mean(0)) / table.std(0), y)


def ts_feature_mlp():
    return nn.Sequential(nn.Linear(14, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


# --- sample-loss-outlier: box coordinates wrapped round an unsigned 16-bit integer -------------------------


def boxes_with_wrapped_coordinates(n=192, size=32, seed=39):
    """tf-faster-rcnn #284 (``rpn_loss_box: nan``): a 0-based dataset read by a 1-based loader; the loader's
    ``x1 - 1`` on an object touching the left (or top) border gives -1, stored as uint16: 65535. One bright
    square per image; the target is its box (x1, y1, x2, y2) divided by the image size. Four of the
    objects touch the border."""
    g = _gen(seed)
    images = 0.5 * torch.randn(n, 1, size, size, generator=g)
    boxes = torch.zeros(n, 4)
    for i in range(n):
        w, h = torch.randint(6, 14, (2,), generator=g).tolist()
        x1 = int(torch.randint(1, size - w, (1,), generator=g))
        y1 = int(torch.randint(1, size - h, (1,), generator=g))
        if i in (23, 71, 118, 160):
            x1 = 0 if i % 2 else x1
            y1 = 0 if not i % 2 else y1
        images[i, 0, y1:y1 + h, x1:x1 + w] += 2.0
        boxes[i] = torch.tensor([x1, y1, x1 + w - 1, y1 + h - 1], dtype=torch.float)
    stored = (boxes.long() - 1).remainder(65536).float()   # the loader's "- 1" on every coordinate, as uint16
    return TensorDataset(images, stored / size)


class VGGBoxRegressor(nn.Module):
    """A VGG-16-style trunk (3x3 convolutions and max pooling, no normalisation) and a box head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x):
        return self.head(self.features(x))


# --- probability-loss-on-logits: a focal loss that expects probabilities ----------------------------------


class FocalLossOnProbabilities(nn.Module):
    """Loss_ToolBox-PyTorch #7: the multi-class focal loss after the softmax was taken out of it (it now
    expects probabilities); the network's raw scores go in, ``log(p_t)`` of a negative score is NaN and
    ``(1 - p_t) ** gamma`` of a score above 1 flips the sign of the term."""

    def __init__(self, alpha=0.25, gamma=2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, probs, target):
        pt = probs.gather(1, target.unsqueeze(1)).squeeze(1)
        return (-self.alpha * (1 - pt) ** self.gamma * torch.log(pt)).mean()


def focal_loss_table():
    """The test's 1-D case: 100 non-negative inputs scaled by random integers into a Linear layer over 5
    classes; here a small MLP over 20 standardised features and 5 teacher classes."""
    return TensorDataset(*teacher_table(n=512, features=20, classes=5, seed=41))


# --- initial-loss-mismatch: a T5-style language-model head drawn with variance 1 ---------------------------


def markov_text(n=384, length=16, vocab=27, seed=43):
    """Character sequences from a sparse Markov chain: inputs ``[n, T]``, next-character targets ``[n, T]``."""
    g = _gen(seed)
    trans = torch.softmax(3.0 * torch.randn(vocab, vocab, generator=g), dim=1)
    seq = torch.empty(n * (length + 1), dtype=torch.long)
    seq[0] = 0
    for i in range(1, len(seq)):
        seq[i] = torch.multinomial(trans[seq[i - 1]], 1, generator=g)
    windows = seq.view(n, length + 1)
    return TensorDataset(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())


class TinyT5LM(nn.Module):
    """transformers #26441: T5's final RMSNorm and an untied ``lm_head`` whose weights are drawn from
    N(0, 1) ("variance of 1"): the logits have a variance of about the hidden width, and the first
    cross-entropy is ~110 where ~11 (ln of the vocabulary) is expected. Returns ``[B, vocab, T]``."""

    def __init__(self, vocab=27, width=32, length=16, heads=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        nn.init.normal_(self.embed.weight, std=1.0)
        self.pos = nn.Parameter(0.02 * torch.randn(1, length, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.final_norm = nn.RMSNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=1.0)
        mask = torch.triu(torch.full((length, length), float("-inf")), diagonal=1)
        self.register_buffer("causal", mask)

    def forward(self, x):
        t = x.shape[1]
        h = self.encoder(self.embed(x) + self.pos[:, :t], mask=self.causal[:t, :t])
        return self.lm_head(self.final_norm(h)).transpose(1, 2)


# --- train-eval-gap: both halves of a ranking pair through BatchNorm in separate passes -------------------


def alignment_pairs(n=192, size=8, seed=45):
    """miss-alignment #6: tomogram patches reconstructed from aligned and from misaligned tilt series; the
    misaligned reconstruction is the same density smeared over a few shifts. Every pair is stored
    (aligned, misaligned) with target -1 ("the second one scores higher"), never the other way round."""
    g = _gen(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size).float()] * 3, indexing="ij"))  # [3, D, H, W]
    aligned = torch.zeros(n, 1, size, size, size)
    for i in range(n):
        for _ in range(3):
            c = torch.rand(3, 1, 1, 1, generator=g) * (size - 3) + 1.5
            aligned[i, 0] += torch.exp(-((grid - c) ** 2).sum(0) / 1.5)
    shifts = [(0, 1), (0, -1), (1, 1), (1, -1), (2, 1)]
    smeared = sum(torch.roll(aligned, s, dims=2 + d) for d, s in shifts) / len(shifts)
    misaligned = 0.6 * aligned + 0.4 * smeared
    noise = lambda: 0.15 * torch.randn(n, 1, size, size, size, generator=g)  # noqa: E731
    pairs = torch.stack([aligned + noise(), misaligned + noise()], 1)           # [n, 2, 1, D, H, W]
    return TensorDataset(pairs, -torch.ones(n))


class ResBlock3d(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.c1, self.b1 = nn.Conv3d(width, width, 3, padding=1, bias=False), nn.BatchNorm3d(width)
        self.c2, self.b2 = nn.Conv3d(width, width, 3, padding=1, bias=False), nn.BatchNorm3d(width)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class MisalignmentScorer(nn.Module):
    """A small 3-D ResNet that gives a volume a misalignment score; the pair model scores ``img1`` and then
    ``img2`` in two separate calls, as the report's ``score1 = self(img1); score2 = self(img2)``: every
    BatchNorm pass in train() mode sees a batch of only aligned or only misaligned volumes."""

    def __init__(self, width=8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(1, width, 3, padding=1, bias=False), nn.BatchNorm3d(width), nn.ReLU(),
                                 ResBlock3d(width), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(width, 1))

    def forward(self, pair):
        return torch.cat([self.net(pair[:, 0]), self.net(pair[:, 1])], 1)   # [B, 2]


def margin_ranking(scores, target):
    """``nn.MarginRankingLoss(margin=1.0)(score1, score2, target)``."""
    return F.margin_ranking_loss(scores[:, 0], scores[:, 1], target, margin=1.0)


# --- batch-mixing: attention weights softmaxed over the batch ----------------------------------------------


def word_prefixes(n=512, vocab=27, seed=47):
    """nlp_study's word task: the first three letters of a word, predict the fourth."""
    g = _gen(seed)
    trans = torch.softmax(2.5 * torch.randn(vocab, vocab, generator=g), dim=1)
    x = torch.empty(n, 4, dtype=torch.long)
    x[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for t in range(1, 4):
        x[:, t] = torch.multinomial(trans[x[:, t - 1]], 1, generator=g).squeeze(1)
    return TensorDataset(x[:, :3].contiguous(), x[:, 3].contiguous())


class AttentionLSTM(nn.Module):
    """nlp_study (``lstm_with_attention.py``, fixed by PR #2): a sequence-first LSTM, dot-product attention of
    its outputs against the last hidden state, the scores laid out ``[T, B]`` and softmaxed over dim 1:
    over the batch, not over the letters."""

    def __init__(self, vocab=27, embed=16, hidden=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden)                 # sequence first: [T, B, H]
        self.fc = nn.Linear(hidden, vocab)

    def attn(self, out, h_t):
        out = out.permute(1, 0, 2)                          # [B, T, H]
        scores = torch.bmm(out, h_t.unsqueeze(2))           # [B, T, 1]
        scores = scores.permute(1, 0, 2).squeeze(2)         # [T, B]
        weights = F.softmax(scores, 1)                      # the bug: dim 1 is the batch
        return torch.bmm(out.transpose(1, 2), weights.unsqueeze(-1).transpose(1, 0)).squeeze(2)

    def forward(self, x):
        out, (h, _) = self.lstm(self.emb(x).transpose(0, 1))
        return self.fc(self.attn(out, h[-1]))


# --- healthy: a Gaussian negative log-likelihood that goes below zero --------------------------------------


def trajectories(n=512, past=8, seed=49):
    """Agent tracks: 8 past 2-D positions (a heading, a speed and a gentle turn, with noise), standardised;
    the target is the next position."""
    g = _gen(seed)
    heading = torch.rand(n, 1, generator=g) * 2 * math.pi
    speed = 0.5 + torch.rand(n, 1, generator=g)
    turn = 0.15 * torch.randn(n, 1, generator=g)
    t = torch.arange(past + 1).float()
    angle = heading + turn * t
    steps = torch.stack([speed * torch.cos(angle), speed * torch.sin(angle)], 2)   # [n, past+1, 2]
    pos = steps.cumsum(1) + 0.05 * torch.randn(n, past + 1, 2, generator=g)
    pos = pos - pos[:, past - 1:past]                                               # centred on the last seen
    return TensorDataset(pos[:, :past] / 3.0, pos[:, past] / 3.0)


class TrajectoryEncoder(nn.Module):
    """AutoBots-style: a transformer encoder over the past positions; the last token predicts the mean and
    the log standard deviation of a Gaussian over the next position."""

    def __init__(self, past=8, width=32):
        super().__init__()
        self.inp = nn.Linear(2, width)
        self.pos = nn.Parameter(0.02 * torch.randn(1, past, width))
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(width, 4)

    def forward(self, x):
        h = self.encoder(self.inp(x) + self.pos)
        return self.out(h[:, -1])                           # [B, 4]: mean (2), log sigma (2)


def gaussian_nll(params, target):
    """The negative log-likelihood of the next position under the predicted Gaussian (torch.distributions):
    below zero once the predicted spread is small, as the maintainers answered in AutoBots #7."""
    mean, log_sigma = params[:, :2], params[:, 2:].clamp(-6, 3)
    return -torch.distributions.Normal(mean, log_sigma.exp()).log_prob(target).sum(1).mean()


# --- the patients ------------------------------------------------------------------------------------------


# --- params-not-in-optimizer: MMVAE #39 ---------------------------------------------------------------


def cell_expression(n=384, genes=64, programs=6, seed=0):
    """Single-cell expression: counts drawn from a mixture of gene programs, normalised to the library size
    and ``log1p``-transformed (the usual scanpy preprocessing). Input and target are the same cell."""
    g = _gen(seed)
    profile = torch.rand(programs, genes, generator=g) ** 3 * 6
    mix = torch.softmax(2.5 * torch.randn(n, programs, generator=g), dim=1)
    counts = torch.poisson(4 * (mix @ profile + 0.05), generator=g)
    x = torch.log1p(1e2 * counts / counts.sum(1, keepdim=True).clamp(min=1))
    return TensorDataset(x, x.clone())


def fc_block(sizes, batch_norm=False):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if batch_norm else []) + [nn.ReLU()]
    return nn.Sequential(*layers)


class SharedVAEEncoder(nn.Module):
    def __init__(self, hidden=32, latent=8):
        super().__init__()
        self.body = fc_block([hidden, 32, 16], batch_norm=True)
        self.mean, self.log_var = nn.Linear(16, latent), nn.Linear(16, latent)

    def forward(self, h):
        h = self.body(h)
        return self.mean(h), self.log_var(h)


class ExpertSharedVAE(nn.Module):
    """MMVAE's layout for one species: an expert encoder, a shared VAE (encoder with mean and log-variance
    heads, decoder), an expert decoder. The output holds the reconstruction and, in its last column, each
    cell's KL term, which the ELBO below adds."""

    def __init__(self, genes=64, hidden=32, latent=8):
        super().__init__()
        self.expert_encoder = fc_block([genes, 64, hidden], batch_norm=True)
        self.vae_encoder = SharedVAEEncoder(hidden, latent)
        self.vae_decoder = fc_block([latent, 16, 32, hidden])
        self.expert_decoder = nn.Sequential(nn.Linear(hidden, 64), nn.ReLU(), nn.Linear(64, genes))

    def forward(self, x):
        mean, log_var = self.vae_encoder(self.expert_encoder(x))
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if self.training else mean
        xhat = self.expert_decoder(self.vae_decoder(z))
        kl = -0.5 * (1 + log_var - mean ** 2 - log_var.exp()).sum(1, keepdim=True)
        return torch.cat([xhat, kl], dim=1)


def elbo(out, x, kl_weight=1.0):
    """Reconstruction error per cell (summed over genes) plus the KL term, averaged over the cells."""
    return ((out[:, :-1] - x) ** 2).sum(1).mean() + kl_weight * out[:, -1].mean()


def adam_vae_encoder_only(params, lr=1e-3, weight_decay=1e-6):
    """MMVAE before its fix: the experts' parameters and ``vae.encoder.parameters()`` reach Adam, the shared
    VAE's decoder never does (it comes third in ``parameters()``)."""
    params = list(params)
    ref = ExpertSharedVAE()
    counts = [len(list(m.parameters())) for m in (ref.expert_encoder, ref.vae_encoder, ref.vae_decoder)]
    if len(params) != len(list(ref.parameters())):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    start, stop = counts[0] + counts[1], counts[0] + counts[1] + counts[2]
    return torch.optim.Adam(params[:start] + params[stop:], lr=lr, weight_decay=weight_decay)


# --- no-trainable-params: BOP19_CDPN #4 ------------------------------------------------------------------


def textured_sphere_crops(n=160, size=16, seed=0):
    """Object crops for dense 3-D coordinate regression: a textured sphere under a random rotation; the
    target is every visible pixel's object coordinate in [-1, 1] (0 on the background)."""
    g = _gen(seed)
    r = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    inside = (xx ** 2 + yy ** 2) <= 0.85
    zz = torch.sqrt((1 - xx ** 2 - yy ** 2).clamp(min=0))
    cam = torch.stack([xx, yy, zz], 0)                                   # [3, S, S] camera-frame points
    images, coords = torch.zeros(n, 3, size, size), torch.zeros(n, 3, size, size)
    for i in range(n):
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
        obj = torch.einsum("ij,jhw->ihw", q.T, cam)                      # object coordinates
        texture = 0.5 + 0.5 * torch.sin(3.0 * obj + torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1))
        images[i] = torch.where(inside, texture * (0.4 + 0.6 * zz), torch.zeros(()))
        coords[i] = torch.where(inside, obj, torch.zeros(()))
    images = images + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return TensorDataset(images, coords)


class CoordinateBinNet(nn.Module):
    """CDPN's rotation head on a small residual FCN: per pixel, ``coor_bin + 1`` logits for each of x, y, z
    (the last bin is background). The reporter moved test.py's decoding into training: the predicted
    coordinate is the argmax bin mapped to [-1, 1], and the loss is taken on that."""

    def __init__(self, bins=16, width=16):
        super().__init__()
        self.bins = bins
        self.backbone = nn.Sequential(conv_bn(3, width), ResBlock(width, 2 * width, 2),
                                      ResBlock(2 * width, 2 * width, 1))
        self.head = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 2, 2), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, 3 * (bins + 1), 1))

    def forward(self, x):
        logits = self.head(self.backbone(x))
        b, _, h, w = logits.shape
        idx = logits.view(b, 3, self.bins + 1, h, w).argmax(dim=2)      # the bug: argmax before the loss
        idx = torch.where(idx == self.bins, torch.zeros_like(idx), idx)
        return 2.0 * idx.float() / (self.bins - 1) - 1.0


# --- pool-stride-gt-kernel: XNNPACK #472 -----------------------------------------------------------------


class MaxPool1x1Net(nn.Module):
    """A small Keras-style image classifier exported to tf.js whose pooling layers have a 1x1 window and a
    2x2 stride: each "pooling" keeps one pixel of four."""

    def __init__(self, channels=3, classes=6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(1, stride=2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(1, stride=2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        return self.fc(self.features(x))


# --- exploding-gradients: VesselTrajectoryPrediction #4 ----------------------------------------------------


def vessel_tracks(n=256, enc_len=120, dec_len=60, seed=0):
    """AIS-like tracks: per point (delta_time, delta_lng, delta_lat, sog, cog), min-max normalised over the
    set as the repository's loader does. Input: the encoder window and the first decoder point; target:
    the next ``dec_len`` points."""
    g = _gen(seed)
    steps = enc_len + dec_len + 1
    dt = 10 + 50 * torch.rand(n, steps, generator=g)                     # seconds between reports
    sog = (8 + 8 * torch.rand(n, 1, generator=g) + 0.5 * torch.randn(n, steps, generator=g).cumsum(1) * 0.1)
    turn = 0.02 * torch.randn(n, 1, generator=g)
    cog = (2 * math.pi * torch.rand(n, 1, generator=g) + turn * torch.arange(steps) +
           0.02 * torch.randn(n, steps, generator=g).cumsum(1)) % (2 * math.pi)
    dist = sog * dt / 3600.0                                            # nautical miles
    points = torch.stack([dt, dist * torch.sin(cog), dist * torch.cos(cog), sog, cog], dim=2)
    lo, hi = points.amin((0, 1)), points.amax((0, 1))
    points = (points - lo) / (hi - lo)
    return TensorDataset(points[:, :enc_len + 1], points[:, enc_len + 1:])


class ReluLSTMLayer(nn.Module):
    """Keras ``LSTM(activation='relu')``: the candidate and output activations are ReLU, the gates sigmoid."""

    def __init__(self, inputs, hidden):
        super().__init__()
        self.hidden = hidden
        self.ih, self.hh = nn.Linear(inputs, 4 * hidden), nn.Linear(hidden, 4 * hidden, bias=False)

    def step(self, x, state):
        h, c = state
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * F.relu(g)
        return torch.sigmoid(o) * F.relu(c), c

    def forward(self, seq, state=None):
        if state is None:
            zeros = seq.new_zeros(seq.shape[0], self.hidden)
            state = (zeros, zeros)
        for t in range(seq.shape[1]):
            state = self.step(seq[:, t], state)
        return state


class TrajectorySeq2Seq(nn.Module):
    """The repository's Seq2Seq (encoder_length 120, decoder_length 60): a ReLU-LSTM encoder over the window,
    a ReLU-LSTM decoder fed its own last prediction (the scheduled-sampling coin ``randint(0, 1) == 2`` never
    picks the true point after t=0), input dropout 0.1 as in the Keras layers; no gradient clipping."""

    def __init__(self, hidden=32, dec_len=60):
        super().__init__()
        self.dec_len = dec_len
        self.drop = nn.Dropout(0.1)
        self.encoder, self.decoder = ReluLSTMLayer(5, hidden), ReluLSTMLayer(5, hidden)
        self.out = nn.Linear(hidden, 5)

    def forward(self, x):
        state = self.encoder(self.drop(x[:, :-1]))
        point, preds = x[:, -1], []
        for _ in range(self.dec_len):
            state = self.decoder.step(self.drop(point), state)
            point = self.out(state[0])
            preds.append(point)
        return torch.stack(preds, dim=1)


def summed_step_rmse(pred, target):
    """The repository's loss: per decoder step the RMSE of (delta_lng, delta_lat), summed over the steps."""
    return sum(torch.sqrt(F.mse_loss(pred[:, t, 1:3], target[:, t, 1:3])) for t in range(pred.shape[1]))


# --- dead-relu: dlrm #358 / pytorch/benchmark #1927 ------------------------------------------------------


def click_logs(n=768, dense=8, tables=(40, 60, 30, 50), seed=0):
    """Criteo-like rows: dense features in [0, 1), one categorical id per table, and a click drawn from
    latent factors. The inputs travel as one float tensor ``[dense | ids]``."""
    g = _gen(seed)
    x = torch.rand(n, dense, generator=g)
    ids = torch.stack([torch.randint(0, t, (n,), generator=g) for t in tables], 1)
    factors = [torch.randn(t, 4, generator=g) for t in tables]
    w = torch.randn(dense, 4, generator=g)
    u = x @ w
    score = sum((u * f[ids[:, k]]).sum(1) for k, f in enumerate(factors)) / len(tables)
    click = (torch.rand(n, generator=g) < torch.sigmoid(score)).float().unsqueeze(1)
    return TensorDataset(torch.cat([x, ids.float()], 1), click)


def dlrm_mlp(sizes, gen):
    """DLRM's ``create_mlp``: W ~ N(0, sqrt(2/(m+n))), b ~ N(0, sqrt(1/m)), a ReLU after every layer (the
    benchmark runs with ``sigmoid_top=-1``, so the last layer gets a ReLU too)."""
    layers = []
    for n, m in zip(sizes[:-1], sizes[1:]):
        lin = nn.Linear(n, m)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(m, n, generator=gen) * math.sqrt(2 / (m + n)))
            lin.bias.copy_(torch.randn(m, generator=gen) * math.sqrt(1 / m))
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers)


class TinyDLRM(nn.Module):
    """DLRM: a bottom MLP over the dense features, one embedding per table, pairwise dot interactions, a top
    MLP. The script seeds its own generator for the init (``numpy_rand_seed``); under this seed the one
    output unit's bias, drawn with std sqrt(1/1) = 1, is -0.98, below every row's pre-activation: the final
    ReLU is 0 for every row and no gradient reaches any layer."""

    def __init__(self, dense=8, tables=(40, 60, 30, 50), dim=8, seed=4):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.dense = dense
        self.bottom = dlrm_mlp([dense, 32, dim], gen)
        self.embeddings = nn.ModuleList()
        for t in tables:
            emb = nn.Embedding(t, dim)
            with torch.no_grad():
                emb.weight.copy_((torch.rand(t, dim, generator=gen) * 2 - 1) * math.sqrt(1 / t))
            self.embeddings.append(emb)
        features = len(tables) + 1
        self.top = dlrm_mlp([dim + features * (features - 1) // 2, 64, 64, 1], gen)
        li, lj = torch.tril_indices(features, features, offset=-1)
        self.register_buffer("li", li)
        self.register_buffer("lj", lj)

    def forward(self, x):
        dense, ids = x[:, :self.dense], x[:, self.dense:].long()
        d = self.bottom(dense)
        t = torch.stack([d] + [emb(ids[:, k]) for k, emb in enumerate(self.embeddings)], 1)
        z = torch.bmm(t, t.transpose(1, 2))[:, self.li, self.lj]
        return self.top(torch.cat([d, z], 1))


# --- saturated-activation: nn-zero-to-hero #66 (makemore part 3) -------------------------------------------


class MakemoreMLP(nn.Module):
    """makemore part 3 before the fix: embeddings, a 200-unit tanh layer whose weights are ``torch.randn``
    unscaled (pre-activations of std ~5, most units at +-1), an output layer already scaled by 0.01. The tanh
    is an ``nn.Tanh`` module where the lecture calls ``torch.tanh``; the raw-tensor layers are as written."""

    def __init__(self, vocab=27, context=3, embed=10, hidden=200):
        super().__init__()
        self.C = nn.Parameter(torch.randn(vocab, embed))
        self.W1 = nn.Parameter(torch.randn(context * embed, hidden))
        self.b1 = nn.Parameter(torch.randn(hidden))
        self.tanh = nn.Tanh()
        self.W2 = nn.Parameter(torch.randn(hidden, vocab) * 0.01)
        self.b2 = nn.Parameter(torch.zeros(vocab))

    def forward(self, idx):
        h = self.tanh(self.C[idx].flatten(1) @ self.W1 + self.b1)
        return h @ self.W2 + self.b2


# --- nonfinite-source: Zero-DCE_extension #2 ----------------------------------------------------------------


def exposure_brackets(scenes=24, exposures=6, size=16, seed=0):
    """SICE-style multi-exposure brackets of low-light scenes in [0, 1]: each scene at six exposures, the
    darkest of which the sensor read as all zeros. Input and target are the same image (no reference:
    Zero-DCE's losses are computed from the input and the enhanced image)."""
    g = _gen(seed)
    base = F.interpolate(torch.rand(scenes, 3, 4, 4, generator=g), size=size, mode="bilinear", align_corners=False)
    base = base * (0.6 + 0.4 * torch.rand(scenes, 3, 1, 1, generator=g))
    gains = torch.tensor([0.0, 0.04, 0.08, 0.15, 0.25, 0.4])[:exposures]
    images = (base.unsqueeze(1) * gains.view(1, -1, 1, 1, 1)).flatten(0, 1)
    noise = 0.01 * torch.rand(images.shape, generator=g) * (images > 0)
    images = (images + noise).clamp(0, 1)
    return TensorDataset(images, images.clone())


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.depth = nn.Conv2d(cin, cin, 3, padding=1, groups=cin)
        self.point = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.point(self.depth(x))


class ZeroDCEpp(nn.Module):
    """Zero-DCE++'s curve estimator: seven depthwise-separable convolutions with skip concatenations, a tanh
    curve map applied eight times (LE(x) = x + a x (1 - x)). Returns the enhanced image and the curve map."""

    def __init__(self, width=8):
        super().__init__()
        self.relu = nn.ReLU()
        self.c1, self.c2 = DepthwiseSeparable(3, width), DepthwiseSeparable(width, width)
        self.c3, self.c4 = DepthwiseSeparable(width, width), DepthwiseSeparable(width, width)
        self.c5, self.c6 = DepthwiseSeparable(2 * width, width), DepthwiseSeparable(2 * width, width)
        self.c7 = DepthwiseSeparable(2 * width, 3)

    def forward(self, x):
        x1 = self.relu(self.c1(x))
        x2 = self.relu(self.c2(x1))
        x3 = self.relu(self.c3(x2))
        x4 = self.relu(self.c4(x3))
        x5 = self.relu(self.c5(torch.cat([x3, x4], 1)))
        x6 = self.relu(self.c6(torch.cat([x2, x5], 1)))
        a = torch.tanh(self.c7(torch.cat([x1, x6], 1)))
        y = x
        for _ in range(8):
            y = y + a * (y ** 2 - y)
        return torch.cat([y, a], 1)


def spatial_consistency(org, enh):
    """L_spa: the differences to the four neighbours of 4x4-pooled brightness keep their size."""
    o, e = F.avg_pool2d(org.mean(1, keepdim=True), 4), F.avg_pool2d(enh.mean(1, keepdim=True), 4)
    loss = 0.0
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        do = o - torch.roll(o, shifts=(dy, dx), dims=(2, 3))
        de = e - torch.roll(e, shifts=(dy, dx), dims=(2, 3))
        loss = loss + (do - de) ** 2
    return loss.mean()


def color_constancy(enh):
    """L_color as written: k = ((Drg^2 + Drb^2 + Dgb^2) ** 0.5) of the channel means' squared differences."""
    mr, mg, mb = enh.mean((2, 3), keepdim=True).split(1, dim=1)
    drg, drb, dgb = (mr - mg) ** 2, (mr - mb) ** 2, (mb - mg) ** 2
    return torch.pow(drg ** 2 + drb ** 2 + dgb ** 2, 0.5).mean()


def zero_dce_loss(out, org, exposure=0.6):
    """The training script's sum: 1600 * L_TV(curve) + L_spa + 5 * L_color + 10 * L_exp."""
    enh, a = out[:, :3], out[:, 3:]
    tv = ((a[:, :, 1:] - a[:, :, :-1]) ** 2).mean() + ((a[:, :, :, 1:] - a[:, :, :, :-1]) ** 2).mean()
    exp = ((F.avg_pool2d(enh.mean(1, keepdim=True), 4) - exposure) ** 2).mean()
    return 1600 * tv + spatial_consistency(org, enh) + 5 * color_constancy(enh) + 10 * exp


# --- cannot-overfit-batch: keras #4994 -----------------------------------------------------------------------


def newsgroup_tokens(n=640, classes=20, vocab=300, length=20, seed=0):
    """20-Newsgroups-like posts: token ids and the one-hot group (the Keras example's categorical labels)."""
    x, y = topic_tokens(n=n, length=length, vocab=vocab, classes=classes, seed=seed)
    return TensorDataset(x, F.one_hot(y, classes).float())


class OneUnitLSTMClassifier(nn.Module):
    """keras #4994: the pretrained-embeddings example with its convolutions replaced by ``LSTM(128)``, then
    ``Dense(1)`` + sigmoid, then ``Dense(20, softmax)``: every post is squeezed through one number in (0, 1).
    The embedding stands in for the frozen GloVe matrix (``trainable=False``)."""

    def __init__(self, vocab=300, embed=32, hidden=32, classes=20):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.embed.weight.requires_grad_(False)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.squeeze = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())
        self.classify = nn.Sequential(nn.Linear(1, classes), nn.Softmax(dim=-1))

    def forward(self, x):
        _, (h, _) = self.lstm(self.embed(x))
        return self.classify(self.squeeze(h[-1]))


# --- fp16-overflow: darts #3081 -----------------------------------------------------------------------------


def covariate_windows(n=384, past=24, future=6, seed=0):
    """Hourly demand with a daily cycle, a known temperature covariate and calendar features. Input: ``past``
    steps of (target, temperature, hour sin/cos) and ``future`` steps of the known covariates (the target
    zeroed there); target: the next ``future`` values."""
    g = _gen(seed)
    start = torch.randint(0, 24 * 60, (n, 1), generator=g).float()
    t = start + torch.arange(past + future).float()
    hour = 2 * math.pi * (t % 24) / 24
    temp = torch.sin(hour - 1.0) + 0.3 * torch.randn(n, past + future, generator=g)
    demand = 1.0 + 0.6 * torch.sin(hour) + 0.3 * temp + 0.1 * torch.randn(n, past + future, generator=g)
    known = torch.stack([temp, torch.sin(hour), torch.cos(hour)], 2)
    observed = torch.cat([demand[:, :past], torch.zeros(n, future)], 1).unsqueeze(2)
    return TensorDataset(torch.cat([observed, known], 2), demand[:, past:])


class GRN(nn.Module):
    """TFT's gated residual network: Linear-ELU-Linear, a GLU gate, add and LayerNorm."""

    def __init__(self, size, dropout=0.1):
        super().__init__()
        self.fc1, self.elu, self.fc2 = nn.Linear(size, size), nn.ELU(), nn.Linear(size, size)
        self.drop, self.gate, self.norm = nn.Dropout(dropout), nn.Linear(size, 2 * size), nn.LayerNorm(size)

    def forward(self, x):
        return self.norm(x + F.glu(self.gate(self.drop(self.fc2(self.elu(self.fc1(x))))), dim=-1))


class MaskedScaledDotProduct(nn.Module):
    """darts' ``_ScaledDotProductAttention`` as reported: ``bmm`` (fp16 under autocast), divided by a float32
    0-dim tensor (which does not promote the fp16 scores back), and the causal mask filled with -1e9."""

    def __init__(self):
        super().__init__()
        self.softmax = nn.Softmax(dim=2)

    def forward(self, q, k, v, mask):
        attn = torch.bmm(q, k.transpose(1, 2))
        attn = attn / torch.sqrt(torch.tensor(k.shape[-1]).to(torch.float32))
        attn = attn.masked_fill(mask, -1e9)
        return torch.bmm(self.softmax(attn), v)


class InterpretableAttention(nn.Module):
    """TFT's interpretable multi-head attention: per-head queries and keys, one shared value projection,
    the heads averaged."""

    def __init__(self, d_model=16, heads=4):
        super().__init__()
        d = d_model // heads
        self.q = nn.ModuleList([nn.Linear(d_model, d) for _ in range(heads)])
        self.k = nn.ModuleList([nn.Linear(d_model, d) for _ in range(heads)])
        self.v, self.w_h = nn.Linear(d_model, d), nn.Linear(d, d_model, bias=False)
        self.attention = MaskedScaledDotProduct()

    def forward(self, q, kv, mask):
        v = self.v(kv)
        heads = [self.attention(qi(q), ki(kv), v, mask) for qi, ki in zip(self.q, self.k)]
        return self.w_h(torch.stack(heads, 2).mean(2))


class TinyTFT(nn.Module):
    """A Temporal Fusion Transformer in miniature: input projection and GRN (for the variable selection), LSTM
    encoder over the past and decoder over the future, gated skip, static-free enrichment GRN, causal
    interpretable attention of the future steps over all steps, position-wise GRN, one output per quantile."""

    def __init__(self, inputs=4, hidden=16, past=24, future=6, quantiles=17):
        super().__init__()
        self.past, self.future = past, future
        self.embed, self.select = nn.Linear(inputs, hidden), GRN(hidden)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.decoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.lstm_gate, self.lstm_norm = nn.Linear(hidden, 2 * hidden), nn.LayerNorm(hidden)
        self.enrich, self.attention = GRN(hidden), InterpretableAttention(hidden)
        self.attn_gate, self.attn_norm = nn.Linear(hidden, 2 * hidden), nn.LayerNorm(hidden)
        self.position, self.out = GRN(hidden), nn.Linear(hidden, quantiles)
        steps = past + future
        causal = torch.triu(torch.ones(steps, steps, dtype=torch.bool), diagonal=1)[past:]
        self.register_buffer("mask", causal)                             # [future, past + future]

    def forward(self, x):
        e = self.select(self.embed(x))
        enc, state = self.encoder(e[:, :self.past])
        dec, _ = self.decoder(e[:, self.past:], state)
        h = self.lstm_norm(e + F.glu(self.lstm_gate(torch.cat([enc, dec], 1)), dim=-1))
        h = self.enrich(h)
        mask = self.mask.expand(x.shape[0], -1, -1)
        a = self.attention(h[:, self.past:], h, mask)
        a = self.attn_norm(h[:, self.past:] + F.glu(self.attn_gate(a), dim=-1))
        return self.out(self.position(a))                                # [B, future, quantiles]


DARTS_QUANTILES = (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)


def quantile_loss(pred, target):
    """darts' ``QuantileRegression`` likelihood: the pinball loss over its default quantiles."""
    q = torch.tensor(DARTS_QUANTILES, device=pred.device)
    err = target.unsqueeze(-1) - pred
    return torch.maximum(q * err, (q - 1) * err).sum(-1).mean()


# --- two faults: brain.js #850 ---------------------------------------------------------------------------------


def yearly_emissions(seed=0):
    """brain.js #850: the input is the calendar year (quarterly readings 2004-2021, raw), the eight outputs are
    emission figures in their raw units (0 to ~25 000) that a sigmoid output can never reach."""
    g = _gen(seed)
    year = 2004 + torch.arange(72).float() / 4
    base = torch.tensor([11500.0, 2070.0, 2415.0, 0.0, 0.0, 4255.0, 690.0, 2070.0])
    trend = torch.tensor([900.0, 140.0, 160.0, 0.0, 0.0, 520.0, 50.0, -10.0])
    t = (year - 2004).unsqueeze(1)
    y = (base + trend * t) * (1 + 0.05 * torch.randn(72, 8, generator=g))
    return TensorDataset(year.unsqueeze(1), y.clamp(min=0))


def brainjs_default_net(inputs=1, outputs=8):
    """``new brain.NeuralNetwork()``: one hidden layer of max(3, floor(inputs/2)) = 3 units, sigmoid on every
    layer including the output, weights and biases uniform in [-0.2, 0.2]."""
    net = nn.Sequential(nn.Linear(inputs, 3), nn.Sigmoid(), nn.Linear(3, outputs), nn.Sigmoid())
    for p in net.parameters():
        nn.init.uniform_(p, -0.2, 0.2)
    return net


# --- sample-load-error: lightweight-gan #109 ---------------------------------------------------------------------


class CatsAndDogsFolder(torch.utils.data.Dataset):
    """lightweight-gan #109 (the Kaggle cats-and-dogs folder): a few files that PIL cannot decode (``Cat/666.jpg``
    is zero bytes). ``__getitem__`` decodes on the fly, as an ImageFolder does, and raises for those indices."""

    BROKEN = (17, 166, 301)

    def __init__(self, n=384, seed=0):
        self.x, self.y = pattern_images(n=n, channels=3, size=16, classes=2, seed=seed)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if i in self.BROKEN:
            raise OSError(f"cannot identify image file 'PetImages/Cat/{666 + i}.jpg'")
        return self.x[i], self.y[i]


# --- training-crashed: pytorch_Squeezenet #2 ----------------------------------------------------------------------


class SqueezeNetFixedBatchView(nn.Module):
    """pytorch_Squeezenet #2: ``scores.view(args.batch_size, args.num_classes)`` in the training loop, here inside
    ``forward``: every batch of 64 trains, the last one of the epoch (50 000 % 64 = 16 images there; 400 % 64 = 16
    here) raises ``shape '[64, 10]' is invalid for input of size 160``."""

    def __init__(self, batch_size=64, classes=10):
        super().__init__()
        self.batch_size, self.classes = batch_size, classes
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Conv2d(32, classes, 1)   # SqueezeNet's final 1x1 conv, global pooling before it

    def forward(self, x):
        scores = self.classifier(self.features(x))
        return scores.view(self.batch_size, self.classes)


# --- training-crashed: nncf #379 ------------------------------------------------------------------------------------


class BNHeadCNN(nn.Module):
    """nncf #379 (CIFAR-10 sanity tests, 1000 samples): a CNN whose classifier head holds a BatchNorm1d over
    ``[N, features]``; with ``len % batch_size == 1`` the epoch's last batch is one sample, and BatchNorm in
    training mode raises ``Expected more than 1 value per channel when training``."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.features(x))


# --- the patients -----------------------------------------------------------------------------------------------


# --- the zoo ----------------------------------------------------------------------------------------

FP = FieldPatient
S = frozenset


class ConstantInitMLP(nn.Module):
    """NaNmnist #2 and an online course's weight-initialisation exercise: an MNIST MLP (16x16 images here) whose
    every Linear gets one constant weight and a zero bias, dropout 0.2 between the layers."""

    def __init__(self, constant_weight=0.0, size=16, classes=6):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(size * size, 256), nn.Linear(256, 128), nn.Linear(128, classes)
        self.dropout = nn.Dropout(0.2)
        for m in (self.fc1, self.fc2, self.fc3):
            nn.init.constant_(m.weight, constant_weight)
            nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = x.flatten(1)
        x = self.dropout(torch.relu(self.fc1(x)))
        x = self.dropout(torch.relu(self.fc2(x)))
        return self.fc3(x)


class ZeroInitLinear(nn.Module):
    """pytorch_musicnet #4: one Linear from the features to the labels, its weights initialised to zero, which
    is fine (no hidden units whose symmetry needs breaking); the outputs are all exactly 0 at the start."""

    def __init__(self, features=256, classes=6):
        super().__init__()
        self.linear = nn.Linear(features, classes, bias=False)
        nn.init.constant_(self.linear.weight, 0)

    def forward(self, x):
        return self.linear(x.flatten(1))


class TaggerTagsLast(Tagger):
    """poutyne #57: per-token scores returned [B, T, tags] straight from the Linear into CrossEntropyLoss, which
    reads the classes on dim 1; with as many tags as tokens (16) nothing raises."""

    def forward(self, x):
        h, _ = self.rnn(self.embed(x))
        return self.fc(h)


class PadMaskOnTokensEncoder(TinyEncoder):
    """pytorch #24816 and #64525: the key padding mask given True where the tokens are (x != 0, the
    attention-mask convention of other libraries), so a sequence without padding has every key masked. Training
    (the SDPA path) zero-fills such rows; evaluation under no_grad takes the fused fast path, whose softmax over
    the empty set is NaN (pytorch #190486)."""

    def forward(self, x):
        h = self.embed(x) + self.pos[:, :x.shape[1]]
        h = self.encoder(h, src_key_padding_mask=(x != 0))
        return self.fc(h.mean(dim=1))


def step_loss_rebuilt(model, batch, loss_fn, optimizer):
    """speechbrain #735: 'element 0 of tensors does not require grad' answered by making the loss a new tensor
    with requires_grad=True: backward() runs, and no gradient reaches the model."""
    inputs, targets = batch
    optimizer.zero_grad()
    loss = loss_fn(model(inputs), targets)
    loss = torch.tensor(loss.item(), requires_grad=True)
    loss.backward()
    optimizer.step()
    return loss


def step_zero_grad_after_step(model, batch, loss_fn, optimizer):
    """SAGPool #15 asks whether zero_grad() after step() matters: it does not, the gradients are zero again
    before the next backward()."""
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss


FIELD_ZOO: list[FieldPatient] = [
    # --- data ---------------------------------------------------------------------------------------
    FP("lstm-sensor-nan-readings", S({"data-nonfinite"}),
       lambda: P(LSTMRegressor, sensor_readings_with_gaps(), nn.MSELoss()),
       "https://github.com/timeseriesAI/tsai/issues/506"),
    FP("resnet-blank-frames-per-image-std", S({"data-nonfinite"}),
       lambda: P(lambda: ResNetMini(channels=3), frames_with_blanks(), opt=torch.optim.SGD, lr=0.05,
                 momentum=0.9, batch_size=16),
       "https://github.com/vanvalenlab/deepcell-toolbox/pull/72"),
    FP("unet-masks-0-255-into-ce", S({"target-out-of-range"}),
       lambda: P(lambda: TinyUNet(out=2), unet_masks_0_255(), batch_size=8),
       "https://github.com/milesial/Pytorch-UNet/issues/291"),
    FP("unet-masks-0-255-into-bce-with-logits", S({"target-out-of-range"}),
       lambda: P(lambda: TinyUNet(out=1), unet_masks_0_255_float(), nn.BCEWithLogitsLoss(), batch_size=8),
       "https://github.com/MontaEllis/Pytorch-Medical-Segmentation/issues/8"),
    FP("gru-labels-1-to-n", S({"target-out-of-range"}),
       lambda: P(GRUClassifier, TensorDataset(wave_sequences()[0], wave_sequences()[1] + 1)),
       "https://github.com/pytorch/pytorch/issues/15666"),
    FP("encoder-label-minus-one", S({"target-out-of-range"}),
       lambda: P(TinyEncoder, TensorDataset(topic_tokens()[0], topic_tokens()[1] - 1), lr=3e-4),
       "https://github.com/EricFillion/happy-transformer/issues/248"),
    FP("lenet-mnist-0-255", S({"data-unnormalized"}),
       lambda: P(LeNet, TensorDataset(as_pixels(pattern_images()[0]), pattern_images()[1]), opt=torch.optim.SGD,
                 lr=0.01, momentum=0.9),
       "https://github.com/www0wwwjs1/Matrix-Capsules-EM-Tensorflow/issues/51"),
    FP("house-prices-raw-units-sgd", S({"data-unnormalized"}),
       lambda: P(lambda: mlp(6, 1), TensorDataset(*house_prices()), nn.MSELoss(), torch.optim.SGD, lr=1e-3),
       "https://github.com/Liam0205/liam0205.github.io/issues/262"),
    FP("ames-prices-in-dollars-sgd-0.1", S({"data-unnormalized"}),
       lambda: P(lambda: mlp(6, 1), prices_in_dollars(), nn.MSELoss(), torch.optim.SGD, lr=0.1, batch_size=16),
       "https://github.com/rstudio-conf-2020/dl-keras-tf/issues/9"),
    FP("regression-prices-in-dollars-adam", S({"data-unnormalized"}),
       lambda: P(lambda: mlp(6, 1), prices_in_dollars(), nn.MSELoss()),
       "https://github.com/dnouri/nolearn/issues/72"),
    FP("tabular-constant-sensor-column", S({"data-constant-feature"}),
       lambda: P(lambda: mlp(10, 3), constant_sensor_table(), batch_size=64),
       "https://github.com/fastai/fastai/issues/889"),
    FP("weather-cnn-dry-rain-channel", S({"data-constant-feature"}),
       lambda: P(lambda: ResNetMini(channels=3, out=1), dry_period_fields(), nn.MSELoss(), batch_size=16),
       "https://github.com/mllam/neural-lam/issues/136"),
    FP("house-prices-saved-index", S({"csv-index-column"}),
       lambda: P(lambda: mlp(7, 1), saved_index_prices(), nn.MSELoss(), batch_size=64),
       "https://github.com/pandas-dev/pandas/issues/9677"),
    FP("shuffled-frame-saved-index", S({"csv-index-column"}),
       lambda: P(lambda: mlp(9, 3), shuffled_then_saved(), batch_size=64),
       "https://github.com/WillKoehrsen/feature-selector/issues/2"),
    FP("binary-86-14-predicts-majority", S({"class-imbalance"}),
       lambda: P(lambda: mlp(10, 2), TensorDataset(*teacher_table(n=462, classes=2, seed=2, weights=[0.862, 0.138]))),
       "https://github.com/abhuse/polyloss-pytorch/issues/5"),
    FP("gru-rare-class-6pct", S({"class-imbalance"}),
       lambda: P(GRUClassifier, TensorDataset(*imbalanced_waves())),
       "https://github.com/cgrtml/neural-trees/pull/75"),
    FP("lstm-sentinel-targets-minus-9999", S({"sample-loss-outlier", "data-unnormalized"}),
       lambda: P(LSTMRegressor, sentinel_targets(), nn.MSELoss()),
       "https://github.com/davisking/dlib/issues/2153"),
    FP("cnn-16bit-garbage-images", S({"sample-loss-outlier", "data-unnormalized"}),
       lambda: P(lambda: ResNetMini(channels=1), garbage_images(), batch_size=16),
       "https://github.com/stanford-crfm/mistral/issues/115"),
    # --- output / loss pairing ----------------------------------------------------------------------
    FP("char-rnn-softmax-into-nll", S({"nll-on-raw-logits", "double-softmax"}),
       lambda: P(CharRNN, TensorDataset(*wave_sequences()), nn.NLLLoss(), torch.optim.SGD, lr=0.005),
       "https://github.com/pytorch/pytorch/issues/2623"),
    FP("transformer-softmax-into-nll", S({"nll-on-raw-logits", "double-softmax"}),
       lambda: P(lambda: TinyEncoder(final=nn.Softmax(dim=-1)), TensorDataset(*topic_tokens()), nn.NLLLoss(),
                 lr=3e-4),
       "https://github.com/AnubhavGupta3377/Text-Classification-Models-Pytorch/issues/9"),
    FP("pair-encoder-softmax-into-ce", S({"double-softmax"}),
       lambda: P(PairEncoder, TensorDataset(*topic_tokens(seed=1)), lr=3e-4),
       "https://github.com/ariecattan/SciCo/issues/2"),
    FP("unet-log-softmax-into-ce", S({"double-softmax"}),
       lambda: P(lambda: TinyUNet(out=2, final=nn.LogSoftmax(dim=1)),
                 TensorDataset(disc_masks()[0], disc_masks()[1].squeeze(1).long()), batch_size=8),
       "https://github.com/speedinghzl/Pytorch-Deeplab/issues/2"),
    FP("recommender-sigmoid-into-bce-with-logits", S({"double-softmax", "bounded-output-activation"}),
       lambda: P(DotRecommender, TensorDataset(*ratings()), nn.BCEWithLogitsLoss(), batch_size=64),
       "https://github.com/yudi-mars/daisyRec/pull/15"),
    FP("lstm-regression-relu-output", S({"bounded-output-activation"}),
       lambda: P(lambda: LSTMRegressor(final=nn.ReLU()), standardised_forecasting(), nn.MSELoss()),
       "https://github.com/ProteomicsML/ProteomicsML/pull/203"),
    FP("crowd-count-cnn-relu-output", S({"bounded-output-activation"}),
       lambda: P(lambda: nn.Sequential(ResNetMini(channels=1, out=1), nn.ReLU()), standardised_log_counts(),
                 nn.MSELoss(), batch_size=16),
       "https://github.com/xiaochus/MSCNN/pull/3"),
    FP("fcn-bce-without-sigmoid", S({"probability-loss-on-logits"}),
       lambda: P(TinyUNet, TensorDataset(*disc_masks()), nn.BCELoss(), batch_size=8),
       "https://github.com/yunlongdong/FCN-pytorch/issues/7"),
    FP("gru-bce-on-raw-scores", S({"probability-loss-on-logits"}),
       lambda: P(lambda: GRUClassifier(classes=1), TensorDataset(wave_sequences(classes=2)[0],
                                                                 wave_sequences(classes=2)[1].float().unsqueeze(1)),
                 nn.BCELoss()),
       "https://github.com/pytorch/pytorch/issues/139916"),
    FP("char-mlp-randn-output-layer", S({"initial-loss-mismatch", "bad-init"}),
       lambda: P(CharMLP, TensorDataset(*char_windows()), opt=torch.optim.SGD, lr=0.1),
       "https://bigghis.github.io/AI-appunti/guide/optimizations/initialloss.html"),
    FP("resnet-head-normal-std-1", S({"initial-loss-mismatch", "bad-init"}),
       lambda: P(resnet_head_std_1, TensorDataset(*pattern_images()), opt=torch.optim.SGD, lr=0.05, momentum=0.9,
                 batch_size=16),
       "https://stats.stackexchange.com/questions/606359/how-to-initialize-final-layer-to-get-a-good-starting-loss"),
    FP("lstm-stepwise-vs-one-target", S({"loss-shape-mismatch"}),
       lambda: P(StepwiseForecaster, forecasting_one_target_per_window(), nn.MSELoss()),
       "https://github.com/andrewgcodes/xlstm/issues/4"),
    FP("pinn-target-n-vs-n-by-1", S({"loss-shape-mismatch"}),
       lambda: P(lambda: mlp(1, 1, hidden=32, depth=3, act=nn.Tanh), pinn_grid(), nn.MSELoss(), batch_size=64),
       "https://github.com/Photon-AI-Research/NeuralSolvers/issues/20"),
    FP("text-regression-squeezed-logits", S({"loss-shape-mismatch"}),
       lambda: P(SqueezedRegressionHead, text_scores(), nn.MSELoss(), lr=3e-4),
       "https://github.com/deepset-ai/FARM/issues/229"),
    FP("sparse-autoencoder-sum-reduction", S({"loss-reduction-sum"}),
       lambda: P(lambda: nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 32)),
                 TensorDataset(*(lambda z: (z, z))(torch.randn(512, 32, generator=_gen(15)))),
                 nn.MSELoss(reduction="sum"), batch_size=64),
       "https://github.com/ai-safety-foundation/sparse_autoencoder/issues/63"),
    FP("resnet-summed-loss-sgd", S({"loss-reduction-sum"}),
       lambda: P(ResNetMini, TensorDataset(*pattern_images()), nn.CrossEntropyLoss(reduction="sum"),
                 torch.optim.SGD, lr=0.01, momentum=0.9, batch_size=64),
       "https://github.com/WongKinYiu/yolov7/issues/1713"),
    # --- the module tree and the step ---------------------------------------------------------------
    FP("transformer-linear-in-forward", S({"unregistered-module"}),
       lambda: P(EncoderLinearInForward, TensorDataset(*topic_tokens()), lr=3e-4),
       "https://github.com/graykode/nlp-tutorial/issues/29"),
    FP("text-cnn-filters-in-list", S({"unregistered-module"}),
       lambda: P(TextCNNConvList, TensorDataset(*topic_tokens())),
       "https://github.com/pytorch/pytorch/issues/1053"),
    FP("tagger-classifier-not-in-optimizer", S({"params-not-in-optimizer"}),
       lambda: with_optimizer(P(lambda: Tagger(cell=nn.LSTM), TensorDataset(*tagged_tokens())), adam_without_head,
                              "Tagger", lr=1e-3),
       "https://github.com/zjunlp/HVPNeT/issues/5"),
    FP("detector-left-out-of-optimizer", S({"params-not-in-optimizer"}),
       lambda: with_optimizer(P(DetectorCorrector, TensorDataset(*topic_tokens())), adam_corrector_only,
                              "DetectorCorrector", lr=1e-3),
       "https://github.com/quantum00549/SoftMaskedBert/issues/7"),
    FP("lane-net-everything-frozen", S({"no-trainable-params"}),
       lambda: P(frozen_lane_net, TensorDataset(pattern_images()[0], torch.randn(256, 4, generator=_gen(16))),
                 nn.MSELoss(), batch_size=16),
       "https://github.com/cfzd/Ultra-Fast-Lane-Detection/issues/282"),
    FP("finetune-only-temperature-trains", S({"no-trainable-params"}),
       lambda: with_optimizer(P(ScaledCosineHead, TensorDataset(*topic_tokens())), trainable_only,
                              "ScaledCosineHead", lr=1e-3),
       "https://github.com/sicara/easy-few-shot-learning/issues/40"),
    FP("heatmap-unet-no-zero-grad", S({"missing-zero-grad"}),
       lambda: P(TinyUNet, TensorDataset(disc_masks()[0], disc_masks()[1] * 0.9), nn.MSELoss(), batch_size=8,
                 train_step=step_without_zero_grad),
       "https://github.com/yastrebksv/TennisCourtDetector/issues/7"),
    FP("keyword-spotting-gru-no-zero-grad", S({"missing-zero-grad"}),
       lambda: P(GRUClassifier, TensorDataset(*wave_sequences()), opt=torch.optim.SGD, lr=0.05, momentum=0.9,
                 train_step=step_without_zero_grad),
       "https://github.com/wenet-e2e/wekws/pull/73"),
    FP("audio-cnn1d-pool-stride-4", S({"pool-stride-gt-kernel"}),
       lambda: P(lambda: AudioCNN(pool_stride=4), TensorDataset(*waveforms()), batch_size=16),
       "https://github.com/keras-team/keras/issues/8642"),
    FP("cnn-conv3x3-stride-4", S({"pool-stride-gt-kernel"}),
       lambda: P(StrideFourConvNet, TensorDataset(*pattern_images()), batch_size=16),
       "https://github.com/motokimura/yolo_v1_pytorch/issues/7"),
    # --- optimisation ---------------------------------------------------------------------------------
    FP("encoder-adam-lr-0.05", S({"lr-too-high"}),
       lambda: P(lambda: TinyEncoder(layers=2), TensorDataset(*topic_tokens()), lr=0.05),
       "https://github.com/facebookresearch/detr/issues/285"),
    FP("lstm-lm-adam-lr-1", S({"lr-too-high"}),
       lambda: P(lambda: TokenGRU(vocab=27, classes=27), TensorDataset(*char_windows(context=8)), lr=1.0),
       "https://github.com/rajveermalviya/language-modeling/issues/3"),
    FP("linear-regression-sgd-lr-1e-6", S({"lr-too-low"}),
       lambda: P(lambda: nn.Linear(1, 1), TensorDataset(*line_with_offset()), nn.MSELoss(), torch.optim.SGD,
                 lr=1e-6),
       "https://github.com/nethsix/gentle_tensorflow/issues/7"),
    FP("resnet-sgd-lr-1e-5", S({"lr-too-low"}),
       lambda: P(ResNetMini, TensorDataset(*pattern_images()), opt=torch.optim.SGD, lr=1e-5, momentum=0.9,
                 batch_size=16),
       "https://github.com/lucasjinreal/keras_frcnn/issues/76"),
    FP("irnn-long-sequences-explode", S({"exploding-gradients", "lr-too-high"}),
       lambda: P(irnn, TensorDataset(*wave_sequences(length=60)), opt=torch.optim.SGD, lr=0.05),
       "https://github.com/Marcovaldong/lstmp.pytorch/issues/2", also_expected=S({"exploding-gradients"})),
    FP("norm-free-transformer-explodes", S({"exploding-gradients", "lr-too-high"}),
       lambda: P(norm_free_encoder, TensorDataset(*topic_tokens()), opt=torch.optim.SGD, lr=0.5, momentum=0.9),
       "https://github.com/RaoFoundation/bittensor/pull/229", also_expected=S({"exploding-gradients"})),
    FP("seven-sigmoid-layer-dnn", S({"vanishing-gradients"}),
       lambda: P(deep_sigmoid_dnn, speech_frames(), opt=torch.optim.SGD, lr=0.1, batch_size=64),
       "https://github.com/microsoft/CNTK/issues/476"),
    FP("eight-sigmoid-conv-layers", S({"vanishing-gradients"}),
       lambda: P(SigmoidConvNet, TensorDataset(*pattern_images()), opt=torch.optim.SGD, lr=0.05, batch_size=16),
       "https://github.com/rogertrullo/Receptive-Field-in-Pytorch/issues/3"),
    FP("acoustic-model-init-normal-1", S({"bad-init"}),
       lambda: P(lambda: normal_init(AcousticModel(), std=1.0), TensorDataset(*wave_sequences()),
                 opt=torch.optim.SGD, lr=0.01),
       "https://github.com/mozilla/DeepSpeech/issues/138"),
    FP("capsule-like-cnn-init-std-0.01", S({"bad-init", "vanishing-gradients"}),
       lambda: P(lambda: normal_init(LeNet(), std=0.01), TensorDataset(*pattern_images()), opt=torch.optim.SGD,
                 lr=0.01, momentum=0.9, batch_size=16),
       "https://github.com/ageron/handson-ml/pull/176"),
    FP("topic-encoder-relu-dies-at-high-lr", S({"dead-relu", "lr-too-high"}),
       lambda: P(lambda: mlp(200, 4, hidden=128), bag_of_words(), opt=torch.optim.SGD, lr=3.0),
       "https://github.com/dangitstam/topic-rnn/pull/9"),
    FP("listings-sentinel-kills-relus", S({"dead-relu", "data-unnormalized"}),
       lambda: P(lambda: mlp(8, 3, hidden=64), listings_with_sentinel(), opt=torch.optim.SGD, lr=0.01),
       "https://github.com/Liam0205/liam0205.github.io/issues/262"),
    FP("bcd-tanh-net-saturated", S({"saturated-activation", "bad-init"}),
       lambda: P(bcd_net, bcd_table(), nn.MSELoss(), torch.optim.SGD, lr=0.1),
       "https://kiwix.lema.org/stackoverflow.com_en_all_2023-11/questions/61392480/"
       "gradient-descent-with-tanh-0-gradient-on-incorrect-classification"),
    FP("tanh-front-lstm-raw-pressure", S({"saturated-activation", "data-unnormalized"}),
       lambda: P(TanhFrontLSTM, raw_sensor_sequences()),
       "https://github.com/keras-team/keras/issues/1874"),
    # --- normalisation and modes ------------------------------------------------------------------------
    FP("resnet-batchnorm-batch-2", S({"batchnorm-small-batch"}),
       lambda: P(ResNetMini, TensorDataset(*pattern_images()), opt=torch.optim.SGD, lr=0.05, momentum=0.9,
                 batch_size=2),
       "https://github.com/YvanYin/GoalFlow/issues/17"),
    FP("pointnet-batchnorm-batch-1", S({"batchnorm-small-batch", "train-eval-gap"}),
       lambda: P(PointNet, TensorDataset(*point_clouds()), batch_size=1),
       "https://github.com/limhoyeon/ToothGroupNetwork/issues/23"),
    FP("pointnet-slow-bn-momentum-eval-drop", S({"train-eval-gap"}),
       lambda: P(lambda: PointNet(bn_momentum=0.001), TensorDataset(point_clouds()[0] * 3 + 2, point_clouds()[1])),
       "https://github.com/yanx27/GACNet/issues/8"),
    FP("gru-log-of-linear-features", S({"nonfinite-source"}),
       lambda: P(LogFeatureGRU, TensorDataset(*wave_sequences())),
       "https://github.com/pytorch/pytorch/issues/61118"),
    FP("cnn-gem-pooling-pow-negative", S({"nonfinite-source"}),
       lambda: P(GeMNet, TensorDataset(*pattern_images()), batch_size=16),
       "https://github.com/leftthomas/CGD/issues/12"),
    FP("lstm-layernorm-over-one-channel", S({"cannot-overfit-batch"}),
       lambda: P(ChannelNormLSTM, TensorDataset(*forecasting()), nn.MSELoss()),
       "https://github.com/bclarkson-code/Tricycle/issues/45"),  # the overfit-one-batch check that finds it
    FP("encoder-batch-first-false", S({"batch-mixing", "cannot-overfit-batch", "no-generalisation"}),
       lambda: P(lambda: TinyEncoder(batch_first=False), TensorDataset(*topic_tokens()), lr=3e-4),
       "https://github.com/Exorust/TorchLeet/issues/5"),
    FP("mnist-rows-lstm-batch-first-false", S({"batch-mixing"}),
       lambda: P(RowLSTM, TensorDataset(*pattern_images()), lr=0.01, batch_size=64),
       "https://github.com/yunjey/pytorch-tutorial/issues/196"),
    # --- numerical hazards (0.2) -------------------------------------------------------------------------
    FP("reward-model-log-sigmoid", S({"numerical-hazard"}),
       lambda: P(RewardModel, preference_pairs(), pairwise_log_sigmoid),
       "https://github.com/deepspeedai/DeepSpeedExamples/pull/501"),
    FP("unet-dice-loss-without-epsilon", S({"numerical-hazard"}),
       lambda: P(TinyUNet, TensorDataset(*disc_masks(empty_share=0.3)), hard_zero_dice_loss, batch_size=8),
       "https://github.com/nasa/delta/pull/115"),
    FP("siamese-sqrt-of-squared-distance", S({"numerical-hazard"}),
       lambda: P(SiameseNet, siamese_pairs(), contrastive),
       "https://github.com/keras-team/keras/issues/9097"),
    # --- the training set-up ------------------------------------------------------------------------------
    FP("sensor-transformer-fp16-raw-units", S({"fp16-overflow"}),
       lambda: P(RawUnitsEncoder, raw_sensor_sequences(), precision="fp16"),
       "https://github.com/pytorch/pytorch/issues/40497"),
    FP("denoiser-16bit-fp16-no-scaler", S({"fp16-overflow", "data-unnormalized"}),
       lambda: P(denoiser, sixteen_bit_denoising(), nn.MSELoss(), precision="fp16", grad_scaler=False,
                 batch_size=16),
       "https://github.com/locuslab/ect/pull/13"),
    FP("unet-steplr-in-batch-loop", S({"lr-schedule-collapse"}),
       lambda: P(TinyUNet, TensorDataset(*disc_masks()), nn.BCEWithLogitsLoss(), batch_size=8,
                 scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=10, gamma=0.5)),
       "https://github.com/ivadomed/ivadomed/pull/55"),
    FP("transfer-tutorial-steplr-per-batch", S({"lr-schedule-collapse"}),
       lambda: P(ResNetMini, TensorDataset(*pattern_images()), opt=torch.optim.SGD, lr=0.001, momentum=0.9,
                 batch_size=16,
                 scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=7, gamma=0.1)),
       "https://github.com/pytorch/tutorials/pull/640"),
    FP("linear-warmup-total-steps-in-epochs", S({"lr-schedule-collapse"}),
       lambda: P(TinyEncoder, TensorDataset(*topic_tokens()), opt=torch.optim.AdamW, lr=5e-4,
                 scheduler=linear_schedule_with_warmup),
       "https://github.com/rpryzant/causal-bert-pytorch/issues/9"),
    # --- two faults at once ------------------------------------------------------------------------------
    FP("gru-raw-logits-nll-and-lr-1e-6", S({"nll-on-raw-logits", "lr-too-low"}),
       lambda: P(TokenGRU, TensorDataset(*topic_tokens()), nn.NLLLoss(), lr=1e-6),
       "https://github.com/pandeykartikey/Hierarchical-Attention-Network/issues/3",
       also_expected=S({"nll-on-raw-logits", "lr-too-low"})),
    FP("lenet-pixels-0-255-and-sgd-lr-0.1", S({"data-unnormalized", "lr-too-high"}),
       lambda: P(LeNet, TensorDataset(as_pixels(pattern_images()[0]), pattern_images()[1]), opt=torch.optim.SGD,
                 lr=0.1, momentum=0.9),
       "https://github.com/kenshohara/video-classification-3d-cnn-pytorch/issues/54",
       also_expected=S({"data-unnormalized", "lr-too-high"})),
    FP("audio-cnn-summed-loss-and-no-zero-grad", S({"loss-reduction-sum", "missing-zero-grad"}),
       lambda: P(lambda: nn.Sequential(AudioCNN(classes=1)), TensorDataset(waveforms()[0],
                                                                           waveforms()[1].float().unsqueeze(1)),
                 nn.MSELoss(), torch.optim.SGD, lr=0.01, batch_size=32, train_step=step_sum_without_zero_grad),
       "https://github.com/SharifiZarchi/Introduction_to_Machine_Learning/issues/55",
       also_expected=S({"loss-reduction-sum", "missing-zero-grad"})),
    FP("pair-encoder-softmax-and-rare-class", S({"double-softmax", "class-imbalance"}),
       lambda: P(PairEncoder, TensorDataset(*imbalanced_topics()), lr=3e-4),
       "https://github.com/ariecattan/SciCo/issues/2", also_expected=S({"double-softmax", "class-imbalance"})),
    FP("heatmap-unet-batch-2-and-no-zero-grad", S({"missing-zero-grad", "batchnorm-small-batch"}),
       lambda: P(TinyUNet, TensorDataset(disc_masks()[0], disc_masks()[1] * 0.9), nn.MSELoss(), batch_size=2,
                 train_step=step_without_zero_grad),
       "https://github.com/yastrebksv/TennisCourtDetector/issues/7",
       also_expected=S({"missing-zero-grad", "batchnorm-small-batch"})),
    FP("lstm-nan-readings-and-target-n-vs-n-by-1", S({"data-nonfinite", "loss-shape-mismatch"}),
       lambda: P(LSTMRegressor, TensorDataset(sensor_readings_with_gaps().tensors[0],
                                              sensor_readings_with_gaps().tensors[1].squeeze(1)), nn.MSELoss()),
       "https://github.com/timeseriesAI/tsai/issues/506",
       also_expected=S({"data-nonfinite", "loss-shape-mismatch"})),
    FP("transformer-linear-in-forward-and-lr-1e-7", S({"unregistered-module", "lr-too-low"}),
       lambda: P(EncoderLinearInForward, TensorDataset(*topic_tokens()), lr=1e-7),
       "https://github.com/graykode/nlp-tutorial/issues/29", also_expected=S({"unregistered-module", "lr-too-low"})),
    # --- crashes: a sample that cannot be loaded, a shape fixed to the batch size ------------------------------
    FP("cats-and-dogs-undecodable-jpegs", S({"sample-load-error"}),
       lambda: P(lambda: LeNet(channels=3, classes=2), CatsAndDogsFolder(), batch_size=32),
       "https://github.com/lucidrains/lightweight-gan/issues/109"),
    FP("squeezenet-view-with-the-batch-size", S({"training-crashed"}),
       lambda: P(SqueezeNetFixedBatchView, TensorDataset(*pattern_images(n=400, channels=3, size=16, classes=10)),
                 batch_size=64),
       "https://github.com/gsp-27/pytorch_Squeezenet/issues/2"),
    FP("cnn-bn-head-last-batch-of-one", S({"training-crashed"}),
       lambda: P(BNHeadCNN, TensorDataset(*pattern_images(n=385, channels=3, size=16, classes=10)), batch_size=32),
       "https://github.com/openvinotoolkit/nncf/pull/379"),
    # --- a constant init, a loss rebuilt from its value ------------------------------------------------------
    FP("mlp-constant-init-zero", S({"bad-init"}),
       lambda: P(ConstantInitMLP, TensorDataset(*pattern_images()), batch_size=64),
       "https://github.com/wagonhelm/NaNmnist/issues/2"),
    FP("speech-cnn-loss-rebuilt-requires-grad", S({"no-trainable-params"}),
       lambda: P(AudioCNN, TensorDataset(*waveforms()), batch_size=32, train_step=step_loss_rebuilt),
       "https://github.com/speechbrain/speechbrain/issues/735"),
    # --- a weight decay that holds the weights at zero ------------------------------------------------------
    FP("encoder-adam-coupled-weight-decay-0.1", S({"cannot-overfit-batch"}),   # BERT-pytorch: 0.01 at BERT's scale
       lambda: P(TinyEncoder, TensorDataset(*topic_tokens()), lr=3e-4, weight_decay=0.1),
       "https://github.com/codertimo/BERT-pytorch/issues/32"),
    FP("resnet-sgd-weight-decay-0.1", S({"cannot-overfit-batch"}),
       lambda: P(ResNetMini, TensorDataset(*pattern_images()), opt=torch.optim.SGD, lr=0.05, momentum=0.9,
                 weight_decay=0.1, batch_size=32),
       "https://github.com/Joker316701882/Additive-Margin-Softmax/issues/16"),
    FP("tagger-scores-tags-last-into-ce", S({"loss-shape-mismatch"}),
       lambda: P(lambda: TaggerTagsLast(tags=16), TensorDataset(*tagged_tokens(tags=16))),
       "https://github.com/freud14/poutyne/pull/57"),
    FP("encoder-padding-mask-true-on-tokens", S({"nonfinite-source"}),
       lambda: P(PadMaskOnTokensEncoder, TensorDataset(*topic_tokens(pad_to=True))),
       "https://github.com/pytorch/pytorch/issues/24816"),
    # --- healthy, though they look sick -------------------------------------------------------------------
    FP("healthy-encoder-adamw-weight-decay-0.05", HEALTHY,
       lambda: P(TinyEncoder, TensorDataset(*topic_tokens()), opt=torch.optim.AdamW, lr=3e-4, weight_decay=0.05),
       "https://github.com/facebookresearch/deit/issues/68"),
    FP("healthy-linear-model-zero-init", HEALTHY,
       lambda: P(ZeroInitLinear, TensorDataset(*pattern_images()), batch_size=64),
       "https://github.com/jthickstun/pytorch_musicnet/issues/4"),
    FP("healthy-encoder-zero-grad-after-step", HEALTHY,
       lambda: P(TinyEncoder, TensorDataset(*topic_tokens()), lr=3e-4, train_step=step_zero_grad_after_step),
       "https://github.com/inyeoplee77/SAGPool/issues/15"),
    FP("healthy-bn-head-drop-last", HEALTHY,
       lambda: P(BNHeadCNN, TensorDataset(*pattern_images(n=385, channels=3, size=16, classes=10)), batch_size=32,
                 drop_last=True),
       "https://github.com/fastai/fastai/issues/1352"),
    FP("healthy-rows-lstm-sequence-first-transposed", HEALTHY,
       lambda: P(lambda: RowLSTM(transpose=True), TensorDataset(*pattern_images()), lr=0.01, batch_size=64),
       "https://github.com/pytorch/pytorch/issues/1538"),
    FP("healthy-sine-fit-on-linspace-grid", HEALTHY,
       lambda: P(lambda: mlp(1, 1, hidden=32, depth=2, act=nn.Tanh),
                 TensorDataset(torch.linspace(-math.pi, math.pi, 2000).unsqueeze(1),
                               torch.sin(torch.linspace(-math.pi, math.pi, 2000)).unsqueeze(1)),
                 nn.MSELoss(), batch_size=64),
       "https://github.com/Aditta-das/pytorch-practical"),
    FP("healthy-frozen-backbone-trainable-head", HEALTHY,
       lambda: with_optimizer(P(frozen_backbone_model, TensorDataset(*pattern_images()), batch_size=16),
                              trainable_only, "ResNetMini", lr=0.01),
       "https://github.com/Spandan-Madan/Pytorch_fine_tuning_Tutorial/issues/8"),
    FP("healthy-imbalance-3-to-1", HEALTHY,
       lambda: P(lambda: mlp(10, 2), TensorDataset(*teacher_table(n=512, classes=2, seed=17, weights=[0.75, 0.25]))),
       "https://github.com/ematvey/hierarchical-attention-networks/issues/4"),
    FP("healthy-heavy-dropout-0.5", HEALTHY,
       lambda: P(lambda: mlp(10, 3, hidden=128, dropout=0.5), TensorDataset(*teacher_table(n=512, seed=18))),
       "https://github.com/facebookresearch/VideoPose3D/issues/113"),
    FP("healthy-label-smoothing-0.1", HEALTHY,
       lambda: P(ResNetMini, TensorDataset(*pattern_images()), nn.CrossEntropyLoss(label_smoothing=0.1),
                 batch_size=16),
       "https://github.com/lxztju/pytorch_classification/issues/9"),
    FP("healthy-resnet-sgd-lr-0.1-momentum", HEALTHY,
       lambda: P(lambda: ResNetMini(width=16), TensorDataset(*pattern_images()), opt=torch.optim.SGD, lr=0.1,
                 momentum=0.9, weight_decay=5e-4, batch_size=32),
       "https://github.com/NVIDIA/apex/issues/407"),
    FP("healthy-gru-tagger-padding-ignore-index", HEALTHY,
       lambda: P(PaddedTagger, VariableLengthTags(), nn.CrossEntropyLoss(ignore_index=-100), collate_fn=pad_tags),
       "https://github.com/pytorch/pytorch/issues/12670"),
    FP("healthy-transformer-noam-warmup", HEALTHY,
       lambda: P(lambda: TinyEncoder(layers=2), TensorDataset(*topic_tokens()), opt=torch.optim.Adam, lr=1e-3,
                 betas=(0.9, 0.98), eps=1e-9, scheduler=noam),
       "https://github.com/tensorflow/tensor2tensor/issues/280"),
    FP("healthy-prices-in-thousands-standardised-in-model", HEALTHY,
       lambda: P(standardised_regressor, TensorDataset(*house_prices()), nn.MSELoss(), batch_size=64),
       "https://github.com/ultmaster/neuralpredictor.pytorch/issues/2"),
    FP("healthy-batchnorm-batch-32", HEALTHY,
       lambda: P(lambda: ResNetMini(width=16), TensorDataset(*pattern_images()), opt=torch.optim.SGD, lr=0.05,
                 momentum=0.9, batch_size=32),
       "https://github.com/microsoft/CNTK/issues/905"),
    FP("healthy-conv-autoencoder-mse", HEALTHY,
       lambda: P(conv_autoencoder, unit_images(), nn.MSELoss(), batch_size=32),
       "https://github.com/ai-safety-foundation/sparse_autoencoder/issues/63"),
    FP("healthy-bce-with-pos-weight", HEALTHY,
       lambda: P(lambda: mlp(10, 1), rare_positive_table(), nn.BCEWithLogitsLoss(pos_weight=torch.tensor([10.0])),
                 batch_size=64),
       "https://github.com/pytorch/pytorch/pull/6856"),
    FP("healthy-unet-mostly-background", HEALTHY,
       lambda: P(TinyUNet, background_heavy_masks(), nn.BCEWithLogitsLoss(), batch_size=8),
       "https://github.com/milesial/Pytorch-UNet/issues/176"),
    FP("healthy-pointnet-batch-32", HEALTHY,
       lambda: P(PointNet, TensorDataset(*point_clouds())),
       "https://github.com/yanx27/GACNet/issues/8"),
    FP("healthy-realnvp-flow-batchnorm-modes", HEALTHY,
       lambda: P(RealNVP, two_moons(), MeanNLL(), batch_size=100, lr=1e-4),
       "https://github.com/kamenbliznashki/normalizing_flows/issues/13"),
    # --- a second batch of ports ---------------------------------------------------------------------------
    FP("vgg-keras-validation-split-is-last-class", S({"no-generalisation"}),
       vgg_last_class_as_validation,
       "https://github.com/keras-team/keras/issues/8346"),
    FP("text-cnn-test-inputs-shuffled-labels-not", S({"no-generalisation"}),
       text_cnn_shuffled_test_set,
       "https://github.com/dennybritz/cnn-text-classification-tf/issues/136"),
    FP("unet1d-autoencoder-zero-feature-max-normalised", S({"data-constant-feature"}),
       lambda: P(BlockUNet1d, basic_block_features(), nn.MSELoss(), lr=1e-4, batch_size=10),
       "https://github.com/evandowning/deepreflect/issues/11"),
    FP("tsfresh-table-with-series-id-features", S({"csv-index-column"}),
       lambda: P(ts_feature_mlp, tsfresh_table_with_id(), batch_size=32),
       "https://github.com/blue-yonder/tsfresh/issues/162"),
    FP("vgg-box-regressor-uint16-wrapped-x1", S({"sample-loss-outlier"}),
       lambda: P(VGGBoxRegressor, boxes_with_wrapped_coordinates(), nn.SmoothL1Loss(), torch.optim.SGD, lr=1e-3,
                 momentum=0.9, weight_decay=1e-4, batch_size=16),
       "https://github.com/endernewton/tf-faster-rcnn/issues/284"),
    FP("mlp-focal-loss-on-raw-scores", S({"probability-loss-on-logits"}),
       lambda: P(lambda: nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)), focal_loss_table(),
                 FocalLossOnProbabilities(), batch_size=32),
       "https://github.com/Hsuxu/Loss_ToolBox-PyTorch/issues/7"),
    FP("t5-lm-head-init-variance-1", S({"initial-loss-mismatch", "bad-init"}),
       lambda: P(TinyT5LM, markov_text(), opt=torch.optim.Adafactor, lr=1e-2, batch_size=32),
       "https://github.com/huggingface/transformers/pull/26441"),
    FP("resnet3d-ranking-pair-halves-in-separate-bn-passes", S({"train-eval-gap"}),
       lambda: P(MisalignmentScorer, alignment_pairs(), margin_ranking, lr=1e-3, batch_size=16),
       "https://github.com/warpem/miss-alignment/issues/6",
       known_gap="train-eval-gap: the leak of the pair halves' batch statistics opens the gap only after ~400 steps "
                 "(eval/train 1.25x at 100, 3.4x at 600); the train_eval probe trains at most 100"),
    FP("attention-lstm-softmax-over-batch", S({"batch-mixing"}),
       lambda: P(AttentionLSTM, word_prefixes(), lr=1e-3, batch_size=64),
       "https://github.com/ssw-nlp-study-group/nlp_study/pull/2"),
    FP("healthy-trajectory-gaussian-nll-goes-negative", HEALTHY,
       lambda: P(TrajectoryEncoder, trajectories(), gaussian_nll, lr=7.5e-4, batch_size=64),
       "https://github.com/roggirg/AutoBots/issues/7"),
    FP("vae-shared-decoder-not-in-optimizer", S({"params-not-in-optimizer"}),
       lambda: with_optimizer(P(ExpertSharedVAE, cell_expression(), elbo, batch_size=64), adam_vae_encoder_only,
                              "ExpertSharedVAE", lr=1e-3, weight_decay=1e-6),
       "https://github.com/zdebruine/MMVAE/issues/39"),
    FP("pose-coordinates-decoded-by-argmax", S({"no-trainable-params"}),
       lambda: P(CoordinateBinNet, textured_sphere_crops(), nn.L1Loss(), torch.optim.RMSprop, lr=1e-4, batch_size=16),
       "https://github.com/LZGMatrix/BOP19_CDPN_2019ICCV/issues/4"),
    FP("cnn-maxpool-1x1-stride-2", S({"pool-stride-gt-kernel"}),
       lambda: P(MaxPool1x1Net, TensorDataset(*pattern_images(channels=3))),
       "https://github.com/google/XNNPACK/issues/472"),
    FP("relu-lstm-seq2seq-trajectories", S({"exploding-gradients"}),
       lambda: P(TrajectorySeq2Seq, vessel_tracks(), summed_step_rmse, lr=1e-3, batch_size=64),
       "https://github.com/An-Yuhang-ace/VesselTrajectoryPrediction/issues/4"),
    FP("dlrm-output-relu-negative-bias", S({"dead-relu", "bad-init", "bounded-output-activation"}),
       lambda: P(TinyDLRM, click_logs(), nn.MSELoss(), torch.optim.SGD, lr=0.01, batch_size=128),
       "https://github.com/pytorch/benchmark/pull/1927"),
    FP("makemore-mlp-tanh-unscaled-w1", S({"saturated-activation"}),
       lambda: P(MakemoreMLP, TensorDataset(*char_windows(n=1024)), opt=torch.optim.SGD, lr=0.1),
       "https://github.com/karpathy/nn-zero-to-hero/issues/66"),
    FP("zero-dce-color-loss-black-frames", S({"nonfinite-source", "numerical-hazard"}),
       lambda: P(ZeroDCEpp, exposure_brackets(), zero_dce_loss, lr=1e-4, weight_decay=1e-4, batch_size=8,
                 grad_clip=0.1),
       "https://github.com/Li-Chongyi/Zero-DCE_extension/issues/2"),
    FP("lstm-newsgroups-through-one-sigmoid-unit", S({"cannot-overfit-batch"}),
       lambda: P(OneUnitLSTMClassifier, newsgroup_tokens(), nn.BCELoss()),
       "https://github.com/keras-team/keras/issues/4994"),
    FP("tft-causal-mask-minus-1e9-fp16", S({"fp16-overflow"}),
       lambda: P(TinyTFT, covariate_windows(), quantile_loss, lr=1e-3, batch_size=32, precision="fp16"),
       "https://github.com/unit8co/darts/issues/3081"),
    FP("brainjs-year-input-sigmoid-output", S({"data-unnormalized", "bounded-output-activation"}),
       lambda: P(brainjs_default_net, yearly_emissions(), nn.MSELoss(), torch.optim.SGD, lr=0.3, momentum=0.1,
                 batch_size=1),
       "https://github.com/BrainJS/brain.js/issues/850",
       also_expected=S({"data-unnormalized", "bounded-output-activation"})),
]


BY_NAME = {p.name: p for p in FIELD_ZOO}
