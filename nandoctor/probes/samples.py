"""Loading samples by index, in chunks, for the data scan; and per-sample losses in batches.

``SampleSource`` gathers many samples at once: straight tensor indexing for a
``TensorDataset`` (and ``Subset``s of one, and ``nandoctor.datasets.CSVDataset``),
``__getitems__`` when the dataset has it, else one ``dataset[i]`` per index and the
default collate (the user's ``collate_fn`` when the config names one). A sample whose
loading raises is reported with its index and the exception, and left out of the chunk;
a sample whose shape differs from the rest is reported and left out the same way.
Nothing here trains.

``PerSampleLoss`` turns the user's loss into one that returns ``[B]`` values:
``reduction='none'`` when the loss has it, else ``torch.func.vmap`` over the samples,
else a loop over the samples *for the loss only* (the model still runs in batches).

``linear_grad_norms`` gives the gradient norm of every sample of a batch for models made of
``nn.Linear`` layers (MLPs), at the cost of one batched backward pass.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils.data import Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from nandoctor.probes.training import error_record
from nandoctor.watchdog import fetch_many, load_each

MAX_ERRORS_KEPT = 20   # sample errors kept with their message (all are counted)


@dataclass
class Chunk:
    batch: Any                 # the collated samples that loaded
    index: torch.Tensor        # [B] their dataset indices
    errors: list[dict] = field(default_factory=list)  # {"index", "type", "message", "stage"}


def tensor_view(dataset) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None] | None:
    """``(tensors, index map)`` when ``dataset`` is a TensorDataset (or a Subset chain over one), else None."""
    mapping = None
    while isinstance(dataset, Subset):
        idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        mapping = idx if mapping is None else idx[mapping]
        dataset = dataset.dataset
    if isinstance(dataset, TensorDataset) and type(dataset).__getitem__ is TensorDataset.__getitem__:
        return dataset.tensors, mapping
    return None


class SampleSource:
    """Load samples by index, many at a time."""

    def __init__(self, dataset, collate_fn: Callable | None = None):
        self.dataset = dataset
        self.collate = collate_fn or default_collate  # the user's collate_fn, as their DataLoader uses it
        self.view = tensor_view(dataset) if collate_fn is None else None
        self.method = "tensor indexing" if self.view else \
            "__getitems__" if hasattr(dataset, "__getitems__") else "__getitem__ + collate"

    def load(self, index: torch.Tensor) -> Chunk:
        if self.view is not None:
            tensors, mapping = self.view
            rows = index if mapping is None else mapping[index]
            return Chunk(tuple(t[rows] for t in tensors), index)
        items, ok, errors = self._items(index.tolist())
        return self._collate(items, torch.as_tensor(ok, dtype=torch.long), errors)

    def _items(self, index: list[int]) -> tuple[list, list[int], list[dict]]:
        if hasattr(self.dataset, "__getitems__"):
            try:
                return list(fetch_many(self.dataset, index)), index, []
            except Exception:
                pass  # fall back to one by one, to find the sample that raises
        items, ok, errors = [], [], []
        for i, item, exc in load_each(self.dataset, index):  # under the watchdog: a sample that hangs is an error too
            if exc is None:
                items.append(item)
                ok.append(i)
            else:  # the user's __getitem__ raised on this sample: evidence
                errors.append(sample_error(i, exc, "loading"))
        return items, ok, errors

    def _collate(self, items: list, ok: torch.Tensor, errors: list[dict]) -> Chunk:
        if not items:
            return Chunk(None, ok, errors)
        try:
            return Chunk(stack_pairs(items) if self.collate is default_collate else self.collate(items), ok, errors)
        except Exception:
            pass
        # some samples differ in shape or type: keep the most common form, report the others
        forms = [form_of(it) for it in items]
        common = Counter(forms).most_common(1)[0][0]
        keep = [j for j, f in enumerate(forms) if f == common]
        for j, f in enumerate(forms):
            if f != common:
                errors.append({"index": int(ok[j]), "type": "ShapeMismatch", "stage": "collate",
                               "message": f"sample is {f}, most samples are {common}"})
        try:
            batch = self.collate([items[j] for j in keep])
        except Exception as exc:
            errors.append(sample_error(int(ok[0]), exc, "collate"))
            return Chunk(None, ok[:0], errors)
        return Chunk(batch, ok[keep], errors)


def stack_pairs(items: list):
    """``default_collate`` of samples that are plain tuples or lists of tensors (what most datasets return),
    in half its time: one ``torch.stack`` per field. Others go to ``default_collate`` itself; the result is the
    same (a list of stacked fields)."""
    first = items[0]
    if type(first) not in (tuple, list) or not all(isinstance(t, torch.Tensor) for t in first):
        return default_collate(items)
    size = len(first)
    if not all(len(it) == size for it in items):
        return default_collate(items)  # raises: samples of different lengths
    try:
        return [torch.stack([it[k] for it in items]) for k in range(size)]
    except (TypeError, RuntimeError):  # a field that is not a tensor in some sample, or shapes that differ
        return default_collate(items)


def form_of(obj) -> str:
    """A short description of a sample's structure and tensor shapes."""
    if isinstance(obj, torch.Tensor):
        return f"{str(obj.dtype).replace('torch.', '')}{list(obj.shape)}"
    if isinstance(obj, (list, tuple)):
        return "(" + ", ".join(form_of(o) for o in obj) + ")"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k}: {form_of(v)}" for k, v in obj.items()) + "}"
    return type(obj).__name__


def sample_error(index: int, exc: BaseException, stage: str) -> dict:
    rec = error_record(exc)
    return {"index": int(index), "type": rec["type"], "message": rec["message"][:300], "where": rec["where"],
            "stage": stage}


def take(obj, pos: torch.Tensor):
    """The samples at positions ``pos`` of a collated batch (tensors, lists, tuples, dicts)."""
    if isinstance(obj, torch.Tensor):
        return obj[pos] if obj.dim() > 0 else obj  # a 0-dim tensor belongs to the whole batch, not to a sample
    if isinstance(obj, (list, tuple)):
        moved = [take(o, pos) for o in obj]
        return type(obj)(moved) if not hasattr(obj, "_fields") else type(obj)(*moved)
    if isinstance(obj, dict):
        return {k: take(v, pos) for k, v in obj.items()}
    return obj


def as_batch_of_one(obj):
    """One sample (as ``vmap`` hands it over: no batch dimension) as a batch of one: every tensor gets a
    leading dimension of 1, a 0-dim class label included (``take(t, None)`` leaves 0-dim tensors alone)."""
    if isinstance(obj, torch.Tensor):
        return obj.unsqueeze(0)
    if isinstance(obj, (list, tuple)):
        moved = [as_batch_of_one(o) for o in obj]
        return type(obj)(moved) if not hasattr(obj, "_fields") else type(obj)(*moved)
    if isinstance(obj, dict):
        return {k: as_batch_of_one(v) for k, v in obj.items()}
    return obj


def batch_size_of(obj) -> int | None:
    t = first_tensor(obj)
    return int(t.shape[0]) if t is not None and t.dim() > 0 else None


def first_tensor(obj) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for o in obj:
            t = first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for o in obj.values():
            t = first_tensor(o)
            if t is not None:
                return t
    return None


# --- per-sample losses ------------------------------------------------------------------------------
def loss_callable(loss_fn) -> tuple[Callable, dict]:
    """The function behind a loss (module, partial or function) and its bound keyword arguments."""
    if isinstance(loss_fn, functools.partial):
        return loss_fn.func, dict(loss_fn.keywords)
    return loss_fn, {}


def unreduced(loss_fn) -> Callable | None:
    """The same loss with ``reduction='none'``, or None when it has no such switch."""
    if isinstance(loss_fn, torch.nn.Module) and isinstance(getattr(loss_fn, "reduction", None), str):
        clone = copy.copy(loss_fn)
        clone.reduction = "none"
        return clone
    func, kwargs = loss_callable(loss_fn)
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return None
    if "reduction" in params:
        args = loss_fn.args if isinstance(loss_fn, functools.partial) else ()
        return functools.partial(func, *args, **{**kwargs, "reduction": "none"})
    return None


class PerSampleLoss:
    """``(outputs, targets) -> [B]`` losses, the cheapest way the user's loss allows."""

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn
        self.none = unreduced(loss_fn)
        self.method = "reduction='none'" if self.none is not None else "torch.func.vmap"

    def __call__(self, outputs, targets) -> torch.Tensor:
        b = batch_size_of(outputs)
        if self.method == "reduction='none'":
            values = self.none(outputs, targets)
            if isinstance(values, torch.Tensor) and values.dim() >= 1 and values.shape[0] == b:
                return values.reshape(b, -1).float().mean(1)
            self.method = "torch.func.vmap"  # the loss ignored the switch
        if self.method == "torch.func.vmap":
            try:
                return self._vmap(outputs, targets)
            except Exception:
                self.method = "loop over the loss"
        return torch.stack([torch.as_tensor(self.loss_fn(take(outputs, torch.tensor([i])),
                                                         take(targets, torch.tensor([i])))).float().reshape(())
                            for i in range(b)])

    def _vmap(self, outputs, targets) -> torch.Tensor:
        def one(o, t):
            return self.loss_fn(as_batch_of_one(o), as_batch_of_one(t)).float().reshape(())
        return torch.func.vmap(one)(outputs, targets)

    def single(self, outputs, targets) -> torch.Tensor:
        """The loss of one sample given as a batch of one, as a scalar (used under torch.func.grad)."""
        fn = self.none if self.none is not None else self.loss_fn
        return fn(outputs, targets).float().mean()


# --- per-sample gradient norms ------------------------------------------------------------------------
class NotFactorable(Exception):
    """The model's per-sample gradient norms cannot be read off its layers' inputs and output gradients."""


def linear_only(model: torch.nn.Module) -> bool:
    """Every trainable parameter belongs to an ``nn.Linear`` (its weight or bias): an MLP."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    covered = {id(p) for m in model.modules() if isinstance(m, torch.nn.Linear)
               for p in (m.weight, m.bias) if p is not None and p.requires_grad}
    shared = any(id(p) in covered for m in model.modules() if not isinstance(m, torch.nn.Linear)
                 for p in m.parameters(recurse=False))  # a Linear weight also used elsewhere (tied)
    return bool(trainable) and trainable == covered and not shared


def linear_grad_norms(model: torch.nn.Module, per_sample: "PerSampleLoss", inputs, targets
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B] losses, [B] gradient norms)`` of every sample of a batch, for a model whose trainable
    parameters are all in ``nn.Linear`` layers, each called once on ``[B, in]`` inputs: one forward
    and one backward of the whole batch. The gradient of a sample's own loss with respect to a
    Linear's weight is the outer product of the layer's output gradient ``g`` and input ``a`` for that
    sample, so its squared norm is ``|g|^2 |a|^2`` (plus ``|g|^2`` for the bias) without forming it
    (Goodfellow 2015). The model must not mix samples (eval mode: BatchNorm statistics fixed, no
    dropout). Raises ``NotFactorable`` when a layer sees other input shapes or is called twice."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    seen: dict = {}

    def hook(module, args, out):
        if module in seen or not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 2:
            raise NotFactorable(f"{type(module).__name__} called twice or on inputs that are not [B, features]")
        seen[module] = (args[0].detach(), out)

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.enable_grad():
            losses = per_sample(model(inputs), targets)  # [B]
            used = [m for m in layers if m in seen and seen[m][1].requires_grad]
            grads = torch.autograd.grad(losses.sum(), [seen[m][1] for m in used], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    sq = torch.zeros(losses.shape[0], dtype=torch.float32, device=losses.device)
    for m, g in zip(used, grads):
        if g is None:
            continue
        g2 = torch.linalg.vector_norm(g.detach(), dim=1, dtype=torch.float32).square_()      # [B] |g|^2
        if m.weight.requires_grad:
            a2 = torch.linalg.vector_norm(seen[m][0], dim=1, dtype=torch.float32).square_()  # [B] |a|^2
            sq += g2 * (a2 + 1.0) if m.bias is not None and m.bias.requires_grad else g2 * a2
        elif m.bias is not None and m.bias.requires_grad:
            sq += g2
    return losses.detach().float().cpu(), sq.sqrt_().cpu()
