"""Realistic patients: the architectures people bring (GPT, transformer encoder, ResNet, U-Net,
GRU tagger, tabular MLP), each healthy and with faults taken from public bug reports.

The zoo (``zoo.py``) holds one tiny patient per code; these are the field's shapes at a size a
CPU trains in a fraction of a second per step, on synthetic data that is learnable (so the
healthy ones really are healthy). Each entry of ``REALISTIC`` is ``(name, accepted_top_codes,
factory)`` like the zoo's: an empty set means "healthy" (no critical finding).

Where each fault comes from:
- ``gpt-adam-lr-0.1``: Adam at a learning rate far past the transformer's range (nanoGPT
  issues 136 and 468, "loss becomes nan": "try reducing learning rate"; OpenNMT-tf 744: a GPT
  config with lr 2 instead of 2.5e-4).
- ``encoder-softmax-into-ce``: a softmax layer before ``CrossEntropyLoss`` (bowang-lab/
  Transformer-GCN-QA PR 32 "Removes erroneous extra softmax"; bkitano/llama-from-scratch 5).
- ``resnet-pixels-0-255``: images fed as raw 0..255 values, the ``ToTensor``/``Normalize`` step
  forgotten (torchxrayvision issue 9: inf/nan after the first iteration until normalised).
- ``resnet-batch-2``: BatchNorm trained with two images per batch (seed 003 of the catalog).
- ``unet-sigmoid-into-bce-with-logits``: a ``Sigmoid`` as the U-Net's last layer fed to
  ``BCEWithLogitsLoss`` (a segmentation post-mortem: loss stuck near 0.69, "double sigmoid").
- ``unet-mse-mask-without-channel``: masks ``[N, H, W]`` against outputs ``[N, 1, H, W]`` in
  ``MSELoss``, which broadcasts to ``[N, N, H, W]`` with only a warning.
- ``tagger-no-zero-grad``: a hand-written step without ``optimizer.zero_grad()``.
- ``tagger-head-only-optimizer``: an optimizer left over from fine-tuning that gets only the
  classifier's parameters: the embedding and the GRU never move.
- ``tabular-saved-index``: a frame saved with ``to_csv()`` (index on) and read back without
  ``index_col=0``: ``Unnamed: 0`` becomes a feature (seed 004).
- ``tabular-missing-values``: a column with missing values, standardised with pandas (which
  skips NaN) and fed on as NaN (seed 004).
- ``tabular-raw-scales``: the same table without standardisation: ages, incomes in the tens of
  thousands and day counts side by side.
"""

from __future__ import annotations

import io

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from nandoctor.patient import Patient, resolve_device

DEVICE = "cpu"

# --- 1. a small GPT-style causal language model ------------------------------------------------

GPT_VOCAB = 256
GPT_CONTEXT = 64
GPT_WIDTH = 128
GPT_HEADS = 4
GPT_LAYERS = 4


def markov_tokens(n=512, vocab=GPT_VOCAB, length=GPT_CONTEXT + 1, successors=4, seed=0) -> torch.Tensor:
    """``[n, length]`` token ids from a random sparse Markov chain: each token has 4 likely successors
    (entropy ~1.1 nats against ln(256) = 5.5 for a uniform guess), so next-token prediction is learnable."""
    gen = torch.Generator().manual_seed(seed)
    succ = torch.stack([torch.randperm(vocab, generator=gen)[:successors] for _ in range(vocab)])  # [V, 4]
    probs = torch.tensor([0.55, 0.25, 0.15, 0.05])
    tokens = torch.empty(n, length, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, vocab, (n,), generator=gen)
    for t in range(1, length):
        pick = torch.multinomial(probs.expand(n, -1), 1, generator=gen).squeeze(1)  # [n]
        tokens[:, t] = succ[tokens[:, t - 1], pick]
    return tokens


def lm_data() -> TensorDataset:
    tokens = markov_tokens()
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])  # inputs [N, T], next tokens [N, T]


class CausalSelfAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))  # [B, h, T, c/h]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class GPTBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """nanoGPT's layout: token + position embeddings, pre-norm blocks, a final LayerNorm, a linear head."""

    def __init__(self, vocab=GPT_VOCAB, context=GPT_CONTEXT, width=GPT_WIDTH, heads=GPT_HEADS, layers=GPT_LAYERS):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, width)
        self.pos_emb = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(GPTBlock(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):  # nanoGPT's init: N(0, 0.02), zero biases
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))  # [B, T, C]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # [B, T, V]


def lm_cross_entropy(logits, targets):
    """nanoGPT's loss: logits ``[N, T, V]`` against next tokens ``[N, T]``, flattened to ``[N*T, V]``."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


# --- 2. a transformer encoder classifier --------------------------------------------------------

ENC_VOCAB, ENC_LENGTH, ENC_CLASSES = 128, 32, 4


def topic_sequences(n=1024, seed=0) -> TensorDataset:
    """Token sequences whose class is their topic: 30% of each sequence's tokens come from its class's
    16 topic words, the rest are uniform over the vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    topics = torch.randperm(ENC_VOCAB, generator=gen)[:ENC_CLASSES * 16].view(ENC_CLASSES, 16)
    y = torch.randint(0, ENC_CLASSES, (n,), generator=gen)
    uniform = torch.randint(0, ENC_VOCAB, (n, ENC_LENGTH), generator=gen)
    topical = topics[y][torch.arange(n).unsqueeze(1), torch.randint(0, 16, (n, ENC_LENGTH), generator=gen)]
    x = torch.where(torch.rand(n, ENC_LENGTH, generator=gen) < 0.3, topical, uniform)
    return TensorDataset(x, y)


class EncoderClassifier(nn.Module):
    """Embedding + learned positions, ``nn.TransformerEncoder``, mean over tokens, a linear head."""

    def __init__(self, width=64, heads=4, layers=2, softmax_head=False):
        super().__init__()
        self.embed = nn.Embedding(ENC_VOCAB, width)
        self.pos = nn.Parameter(torch.zeros(1, ENC_LENGTH, width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        head = [nn.Linear(width, ENC_CLASSES)]
        if softmax_head:  # "probabilities out of the model", then CrossEntropyLoss applies softmax again
            head.append(nn.Softmax(dim=-1))
        self.head = nn.Sequential(*head)

    def forward(self, x):
        h = self.encoder(self.embed(x) + self.pos)  # [B, T, C]
        return self.head(h.mean(dim=1))             # [B, classes]


# --- 3. a ResNet-18 layout at width 16 on 32x32 images -------------------------------------------

RGB_MEAN, RGB_STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)  # torchvision.transforms.Normalize style


def pixel_images(n=512, classes=10, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-like ``[n, 3, 32, 32]`` images as 0..255 pixel values: each class a smooth colour pattern
    (4x4 upsampled), each image that pattern with a random brightness and noise."""
    gen = torch.Generator().manual_seed(seed)
    patterns = F.interpolate(torch.randn(classes, 3, 4, 4, generator=gen), size=32, mode="bilinear",
                             align_corners=False)
    y = torch.randint(0, classes, (n,), generator=gen)
    brightness = 0.3 * torch.randn(n, 1, 1, 1, generator=gen)
    x = patterns[y] + brightness + 0.6 * torch.randn(n, 3, 32, 32, generator=gen)
    return (128 + 45 * x).clamp(0, 255).round(), y


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    """What ``ToTensor()`` + ``Normalize(mean, std)`` do: /255, then per-channel standardisation."""
    mean, std = torch.tensor(RGB_MEAN).view(1, 3, 1, 1), torch.tensor(RGB_STD).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean) / std


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR ResNet-18: a 3x3 stem, four stages of two BasicBlocks, global average pooling."""

    def __init__(self, width=16, classes=10):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for i, w in enumerate(widths):
            for j in range(2):
                blocks.append(BasicBlock(cin, w, stride=2 if i > 0 and j == 0 else 1))
                cin = w
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


# --- 4. a U-Net for binary segmentation -----------------------------------------------------------

def shapes_masks(n=256, size=64, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Grayscale ``[n, 1, size, size]`` images of 1-3 bright discs and rectangles on noise, and their
    masks ``[n, 1, size, size]`` (1 inside a shape)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, size, size)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            cy, cx = torch.randint(8, size - 8, (2,), generator=gen).tolist()
            r = int(torch.randint(4, 12, (1,), generator=gen))
            if torch.rand(1, generator=gen) < 0.5:
                shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                shape = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r // 2 + 2)
            masks[i] = torch.maximum(masks[i], shape.float())
    images = 1.5 * masks + 0.7 * torch.randn(n, size, size, generator=gen)
    images = (images - images.mean()) / images.std()
    return images.unsqueeze(1), masks.unsqueeze(1)


def double_conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """Three downsamplings (64 -> 8), a bottleneck, three transposed-conv upsamplings with skip connections."""

    def __init__(self, width=8, sigmoid_output=False):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.down = nn.ModuleList([double_conv(1, w[0]), double_conv(w[0], w[1]), double_conv(w[1], w[2])])
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(w[2], w[3])
        self.up = nn.ModuleList([nn.ConvTranspose2d(w[3], w[2], 2, 2), nn.ConvTranspose2d(w[2], w[1], 2, 2),
                                 nn.ConvTranspose2d(w[1], w[0], 2, 2)])
        self.merge = nn.ModuleList([double_conv(2 * w[2], w[2]), double_conv(2 * w[1], w[1]),
                                    double_conv(2 * w[0], w[0])])
        self.out = nn.Conv2d(w[0], 1, 1)
        self.final = nn.Sigmoid() if sigmoid_output else nn.Identity()

    def forward(self, x):
        skips = []
        for down in self.down:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.final(self.out(x))  # [B, 1, H, W]


# --- 5. a bidirectional GRU sequence tagger -----------------------------------------------------

TAG_VOCAB, TAG_LENGTH, TAGS = 100, 40, 6


def tagged_sequences(n=512, seed=0) -> TensorDataset:
    """Token sequences ``[n, T]`` and per-token tags ``[n, T]``: a token's tag depends on its own word
    class and its left neighbour's (a random 6x6 table), so the tagger needs context."""
    gen = torch.Generator().manual_seed(seed)
    word_class = torch.randint(0, TAGS, (TAG_VOCAB,), generator=gen)
    table = torch.randint(0, TAGS, (TAGS, TAGS), generator=gen)
    x = torch.randint(1, TAG_VOCAB, (n, TAG_LENGTH), generator=gen)
    left = torch.cat([torch.zeros(n, 1, dtype=torch.long), x[:, :-1]], dim=1)  # token 0 = start
    return TensorDataset(x, table[word_class[x], word_class[left]])


class GRUTagger(nn.Module):
    def __init__(self, embed=64, hidden=64):
        super().__init__()
        self.embed = nn.Embedding(TAG_VOCAB, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.classifier = nn.Linear(2 * hidden, TAGS)

    def forward(self, x):
        h, _ = self.gru(self.embed(x))               # [B, T, 2H]
        return self.classifier(h).transpose(1, 2)    # [B, tags, T]: CrossEntropyLoss's class dimension is 1


def tagger_step_without_zero_grad(model, batch, loss_fn, optimizer):
    """A hand-written step that forgot ``optimizer.zero_grad()``: gradients add up step after step."""
    tokens, tags = batch
    loss = loss_fn(model(tokens), tags)
    loss.backward()
    optimizer.step()
    return loss


def adam_head_only(params, lr=1e-3):
    """Left over from a fine-tuning script (``Adam(model.classifier.parameters())``): only the last
    two tensors, the classifier's weight and bias, reach the optimizer."""
    return torch.optim.Adam(list(params)[-2:], lr=lr)


# --- 6. an MLP on mixed-scale tabular data -------------------------------------------------------

TABLE_ROWS = 2000


def customer_table(seed=0, missing=0.0):
    """A pandas frame of 10 customer features on their natural scales and a 3-class ``label``
    that depends on several of them. ``missing``: the share of ``income`` left NaN."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = TABLE_ROWS
    frame = pd.DataFrame({
        "age": rng.uniform(18, 80, n),
        "income": rng.lognormal(10.5, 0.5, n),           # ~36 000
        "purchases": rng.poisson(5, n).astype(float),
        "tenure_days": rng.uniform(0, 3000, n),
        "credit_score": rng.normal(600, 50, n),
        "discount_ratio": rng.beta(2, 5, n),
        "is_member": rng.integers(0, 2, n).astype(float),
        "has_app": rng.integers(0, 2, n).astype(float),
        "temperature": rng.normal(20, 5, n),
        "visits": rng.poisson(30, n).astype(float),
    })
    z = (frame - frame.mean()) / frame.std()
    score = np.stack([z.age + z.income - 0.5 * z.visits,
                      z.tenure_days * z.is_member + z.credit_score,
                      z.purchases - z.age + z.discount_ratio], axis=1)
    frame["label"] = (score + 0.3 * rng.gumbel(size=score.shape)).argmax(axis=1)
    if missing:
        frame.loc[rng.random(n) < missing, "income"] = np.nan
    return frame


def standardised(frame):
    """Z-score every feature column (pandas skips NaN in mean/std, so NaN stays NaN)."""
    features = frame.drop(columns="label")
    out = (features - features.mean()) / features.std()
    out["label"] = frame["label"]
    return out


def frame_dataset(frame) -> TensorDataset:
    """What a user's own Dataset does: every column but ``label`` as float features."""
    x = torch.tensor(frame.drop(columns="label").to_numpy(dtype="float32"))
    return TensorDataset(x, torch.tensor(frame["label"].to_numpy(), dtype=torch.long))


def saved_and_reloaded(frame):
    """``to_csv()`` with the index (pandas' default), ``read_csv()`` without ``index_col=0``."""
    import pandas as pd

    buffer = io.StringIO()
    frame.to_csv(buffer)
    return pd.read_csv(io.StringIO(buffer.getvalue()))


def tabular_mlp(features=10, classes=3, hidden=64):
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


# --- the patients ----------------------------------------------------------------------------------


def P(model, data, loss=None, opt=torch.optim.Adam, lr=1e-3, **kw) -> Patient:
    return Patient.from_objects(model, data, loss if loss is not None else nn.CrossEntropyLoss(), opt, lr=lr,
                                device=DEVICE, **kw)


def head_only_patient() -> Patient:
    """``Patient.from_objects`` takes optimizer classes; a factory function goes in the dataclass directly."""
    base = P(GRUTagger, tagged_sequences())
    return Patient(model_factory=base.model_factory, train_data=base.train_data, loss_fn=base.loss_fn,
                   optimizer_cls=adam_head_only, optimizer_kwargs={"lr": 1e-3}, batch_size=32,
                   device=resolve_device(DEVICE), loss_name="CrossEntropyLoss", model_name="GRUTagger")


def resnet_data(raw=False) -> TensorDataset:
    pixels, y = pixel_images()
    return TensorDataset(pixels if raw else normalised(pixels), y)


def unet_data(drop_channel=False) -> TensorDataset:
    images, masks = shapes_masks()
    return TensorDataset(images, masks.squeeze(1) if drop_channel else masks)


HEALTHY: set[str] = set()

REALISTIC = [
    # 1. GPT
    ("gpt", HEALTHY, lambda: P(TinyGPT, lm_data(), lm_cross_entropy, torch.optim.AdamW, lr=3e-4)),
    ("gpt-adam-lr-0.1", {"lr-too-high"}, lambda: P(TinyGPT, lm_data(), lm_cross_entropy, lr=0.1)),
    # 2. transformer encoder classifier
    ("encoder", HEALTHY, lambda: P(EncoderClassifier, topic_sequences(), lr=3e-4)),
    ("encoder-softmax-into-ce", {"double-softmax"},
     lambda: P(lambda: EncoderClassifier(softmax_head=True), topic_sequences(), lr=3e-4)),
    # 3. ResNet-18
    ("resnet18", HEALTHY, lambda: P(ResNet18, resnet_data(), opt=torch.optim.SGD, lr=0.05, momentum=0.9)),
    ("resnet-pixels-0-255", {"data-unnormalized"},
     lambda: P(ResNet18, resnet_data(raw=True), opt=torch.optim.SGD, lr=0.05, momentum=0.9)),
    ("resnet-batch-2", {"batchnorm-small-batch"},
     lambda: P(ResNet18, resnet_data(), opt=torch.optim.SGD, lr=0.05, momentum=0.9, batch_size=2)),
    # 4. U-Net
    ("unet", HEALTHY, lambda: P(UNet, unet_data(), nn.BCEWithLogitsLoss(), batch_size=16)),
    ("unet-sigmoid-into-bce-with-logits", {"double-softmax", "bounded-output-activation"},
     lambda: P(lambda: UNet(sigmoid_output=True), unet_data(), nn.BCEWithLogitsLoss(), batch_size=16)),
    ("unet-mse-mask-without-channel", {"loss-shape-mismatch"},
     lambda: P(UNet, unet_data(drop_channel=True), nn.MSELoss(), batch_size=16)),
    # 5. GRU tagger
    ("gru-tagger", HEALTHY, lambda: P(GRUTagger, tagged_sequences())),
    ("tagger-no-zero-grad", {"missing-zero-grad"},
     lambda: P(GRUTagger, tagged_sequences(), train_step=tagger_step_without_zero_grad)),
    ("tagger-head-only-optimizer", {"params-not-in-optimizer"}, head_only_patient),
    # 6. tabular MLP
    ("tabular-mlp", HEALTHY, lambda: P(tabular_mlp, frame_dataset(standardised(customer_table())), batch_size=64)),
    ("tabular-saved-index", {"csv-index-column"},
     lambda: P(lambda: tabular_mlp(features=11), frame_dataset(saved_and_reloaded(standardised(customer_table()))),
               batch_size=64)),
    ("tabular-missing-values", {"data-nonfinite"},
     lambda: P(tabular_mlp, frame_dataset(standardised(customer_table(missing=0.02))), batch_size=64)),
    ("tabular-raw-scales", {"data-unnormalized"},
     lambda: P(tabular_mlp, frame_dataset(customer_table()), batch_size=64)),
]

BY_NAME = {name: (accepted, factory) for name, accepted, factory in REALISTIC}
