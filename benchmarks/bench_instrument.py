"""Cost of the Recorder (per-layer grad/weight norms, activation mean/std, dead/saturated units) over a bare step.

For an MLP, a CNN with BatchNorm, a small GPT-style transformer and a small U-Net, each at a
realistic batch (and a small tabular MLP, whose step of a few tenths of a millisecond is timed beside
the floor of any per-step gradient instrument: optimizer step hooks that do nothing, and hooks that
only read the gradient norms), prints the median time of a bare training step (zero_grad, forward, backward,
Adam step) and of the same step with the Recorder attached, and their ratio (target: <= 1.15),
for two settings: the Recorder as the overfit probe attaches it to a run of its ideal length
(activations on every k-th step, ``activation_every``; the gradients on every step), and with
every step measured. ``sub_batch=4`` and the update ratios are timed on request (``--all``).
The trainers take turns one block of steps at a time (a block holds k steps, so each sparse
block measures one) and the median blocks are compared, so a busy machine disturbs every side
alike; steps are timed in CPU seconds of this process, on one thread, so that other work on a
shared machine weighs less.

    python benchmarks/bench_instrument.py          # default Recorder, about a minute
    python benchmarks/bench_instrument.py --all    # also every=4, sub_batch=4, updates: ~2.5 minutes
    python benchmarks/bench_instrument.py --only tabular   # the cases whose name holds a word
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nandoctor.probes.instrument import Recorder  # noqa: E402
from nandoctor.probes.overfit import MAX_STEPS, activation_every  # noqa: E402

SECONDS_PER_TRAINER = 7.5  # wall seconds spent timing each trainer (bare or instrumented) of a model
MIN_ROUNDS, MAX_ROUNDS = 6, 60     # rounds of one block (BLOCK steps) per trainer
WARMUP = 2                 # untimed steps per trainer (the recorder sizes its buffers)
TARGET = 1.15              # the target: <= 15% over a bare step


# --- the models ----------------------------------------------------------------------------
def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 10))


def tabular() -> nn.Module:
    """A small tabular MLP (10 features, two hidden layers of 64): a step of a few tenths of a millisecond."""
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 8 * 8, 10))


class Block(nn.Module):
    """A GPT block: pre-LayerNorm causal self-attention and a GELU MLP, each with a residual."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc, self.act, self.out = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):                                      # [N, T, d]
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)       # 3 x [N, T, d]
        q, k, v = (z.view(n, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(n, t, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.out(self.act(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    def __init__(self, vocab: int = 256, d: int = 128, layers: int = 4, heads: int = 4, context: int = 64):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, idx):                                    # [N, T] token ids
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.ln(self.blocks(x)))              # [N, T, vocab]


def conv_bn_relu(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Three levels down (max-pool) and up (transposed conv), skips concatenated on the channels."""

    def __init__(self, cin: int = 3, classes: int = 2, width: int = 16):
        super().__init__()
        w = width
        self.d1, self.d2, self.d3 = conv_bn_relu(cin, w), conv_bn_relu(w, 2 * w), conv_bn_relu(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.bottom = conv_bn_relu(4 * w, 8 * w)
        self.up3, self.u3 = nn.ConvTranspose2d(8 * w, 4 * w, 2, stride=2), conv_bn_relu(8 * w, 4 * w)
        self.up2, self.u2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), conv_bn_relu(4 * w, 2 * w)
        self.up1, self.u1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), conv_bn_relu(2 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x):                                      # [N, 3, 64, 64]
        s1 = self.d1(x)                                        # [N, w, 64, 64]
        s2 = self.d2(self.pool(s1))                            # [N, 2w, 32, 32]
        s3 = self.d3(self.pool(s2))                            # [N, 4w, 16, 16]
        y = self.bottom(self.pool(s3))                         # [N, 8w, 8, 8]
        y = self.u3(torch.cat([self.up3(y), s3], dim=1))
        y = self.u2(torch.cat([self.up2(y), s2], dim=1))
        y = self.u1(torch.cat([self.up1(y), s1], dim=1))
        return self.head(y)                                    # [N, classes, 64, 64]


def classify(n: int, shape: tuple[int, ...], classes: int = 10):
    return torch.randn(n, *shape), torch.randint(0, classes, (n,))


CASES = {  # name: (model factory, batch factory)
    "mlp 512 batch 256": (mlp, lambda: classify(256, (128,))),
    "tabular mlp 64 batch 64": (tabular, lambda: classify(64, (10,), classes=3)),
    "cnn+bn 32x32 batch 64": (cnn, lambda: classify(64, (3, 32, 32))),
    "gpt 4x128 ctx 64 batch 32": (GPT, lambda: (torch.randint(0, 256, (32, 64)), torch.randint(0, 256, (32, 64)))),
    "unet 64x64 batch 8": (UNet, lambda: (torch.randn(8, 3, 64, 64), torch.randint(0, 2, (8, 64, 64)))),
}
PROBE = f"overfit probe (every={activation_every(MAX_STEPS)})"
MODES = {PROBE: {"every": activation_every(MAX_STEPS), "moments": False}, "every step": {}}  # the probe's
# options (``overfit.probe_recorder``), then every statistic on every step
EXTRA_MODES = {"sub_batch=4": {"sub_batch": 4}, "updates": {"updates": True}}
BLOCK = activation_every(MAX_STEPS)   # steps per turn: one measured step in each sparse block
# the floor of any per-step gradient instrument, timed beside the Recorder on the smallest model: optimizer step
# hooks that do nothing, and hooks that only read every gradient's norm onto the host (one batched norm, one read)
FLOOR_CASE = "tabular mlp 64 batch 64"
FLOOR_MODES = {"floor: empty step hooks": {"floor": "empty"}, "floor: grad norms only": {"floor": "norms"},
               "recorder: gradients only": {"activations": False, "every": activation_every(MAX_STEPS)}}


def loss_of(outputs, targets):
    if outputs.dim() == 3:  # [N, T, vocab] against [N, T]
        return F.cross_entropy(outputs.flatten(0, 1), targets.flatten())
    return F.cross_entropy(outputs, targets)


class Trainer:
    """One model and its Adam optimizer, with or without a Recorder; ``step()`` returns its CPU seconds."""

    def __init__(self, model: nn.Module, batch, options: dict | None):
        self.model, self.batch = model, batch
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.rec = None
        if options is not None and "floor" in options:
            self._floor(options["floor"])
        elif options is not None:
            self.rec = Recorder(model, **options)
            self.rec.attach_optimizer(self.optimizer)

    def _floor(self, kind: str) -> None:
        """Step hooks that do nothing (``empty``) or only read the gradient norms (``norms``)."""
        params = list(self.model.parameters())
        out = torch.zeros(len(params))

        def read_norms(*args, **kwargs):
            torch.stack(torch._foreach_norm([p.grad for p in params]), out=out)
            out.tolist()

        def nothing(*args, **kwargs):
            return None
        self.optimizer.register_step_pre_hook(read_norms if kind == "norms" else nothing)
        self.optimizer.register_step_post_hook(nothing)

    def step(self, steps: int = 1) -> float:
        """CPU seconds per step over ``steps`` steps."""
        x, y = self.batch
        start = time.process_time()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss_of(self.model(x), y).backward()
            self.optimizer.step()
        return (time.process_time() - start) / steps


def compare(factory, batch, modes: dict[str, dict]) -> tuple[float, dict[str, float], int]:
    """Median seconds of a bare step, per mode the median instrumented step over the bare one, and the
    number of rounds.

    The trainers take turns one step at a time (in a rotating order), so a machine that slows
    down or speeds up mid-run weighs on every side alike.
    """
    torch.manual_seed(0)
    model = factory()
    trainers = {"bare": Trainer(model, batch, None)}
    for mode, options in modes.items():
        trainers[mode] = Trainer(copy.deepcopy(model), batch, options)
    for _ in range(WARMUP):
        for t in trainers.values():
            t.step()
    start = time.perf_counter()
    for t in trainers.values():
        t.step(BLOCK)
    per_round = time.perf_counter() - start
    budget = SECONDS_PER_TRAINER * len(trainers)
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(budget / max(per_round, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in trainers}
    order = list(trainers)
    for r in range(rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:
            times[name].append(trainers[name].step(BLOCK))
    for t in trainers.values():
        if t.rec is not None:
            t.rec.detach()
            assert not t.rec.activations or (t.rec.activation_steps and t.rec.activation_steps[0] == 0)
            assert t.rec.total_grad_norms and all(map(math.isfinite, t.rec.total_grad_norms))
    bare = statistics.median(times["bare"])
    return bare, {mode: statistics.median(times[mode]) / bare for mode in modes}, rounds


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    modes = {**MODES, **(EXTRA_MODES if "--all" in argv else {})}
    worst = 0.0
    only = argv[argv.index("--only") + 1] if "--only" in argv[:-1] else None
    for name, (factory, make_batch) in CASES.items():
        if only is not None and only not in name:
            continue
        torch.manual_seed(0)
        bare, ratios, rounds = compare(factory, make_batch(), {**modes, **(FLOOR_MODES if name == FLOOR_CASE else {})})
        for mode, ratio in ratios.items():
            if mode == PROBE and name != FLOOR_CASE:
                worst = max(worst, ratio)
            print(f"{name:26s} {mode:24s} {ratio:5.2f}x bare step ({bare * 1e3:6.1f} ms bare, "
                  f"{rounds * BLOCK} steps each)", flush=True)
    print(f"instrumentation overhead (the overfit probe's Recorder, worst case over the MLP, CNN, GPT and U-Net): "
          f"{worst:.2f}x ({'within' if worst <= TARGET else 'ABOVE'} the {TARGET:.2f}x target); on the tabular MLP "
          f"compare the Recorder with the floor rows: any per-step gradient instrument costs them")


if __name__ == "__main__":
    main(sys.argv[1:])
