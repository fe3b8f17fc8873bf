"""Watchdogs: a probe that outruns its deadline is stopped, and a sample whose ``__getitem__`` hangs
stops the probe that loads it, with the sample's index, instead of hanging the whole run.

**Deadlines.** The training loop checks its deadline between steps; that is the ordinary stop.
``deadline(at)`` is the one for code that does not come back to the loop in time (a forward pass
far slower than measured, a lock): a timer that ticks every ``TICK`` seconds raises ``Overrun`` in
the main thread once ``at`` has passed. ``Overrun`` derives from ``BaseException`` so that the
user's own ``except Exception`` cannot swallow it.

**Samples.**
While a probe runs (inside ``limit(seconds)``), every sample nandoctor loads from the user's dataset
goes through here: the patient's loaders and fixed batches read ``watched(dataset)``, the data scan
calls ``load_each``. A timer is armed once per batch; it ticks every second past the limit and,
when the sample being loaded has taken longer than the limit, raises ``SampleTimeout`` inside the
user's ``__getitem__`` (so its traceback ends at the line that hung). The index is remembered: a
later probe that draws the same sample fails at once instead of waiting again.

The timer is ``SIGALRM`` (``setitimer``): it interrupts a ``sleep``, a blocking read or a Python
loop, and starts no thread. It works in the main thread of a POSIX process; anywhere else (a
notebook running nandoctor in a thread, Windows) loading is not watched. DataLoader worker
processes (``num_workers > 0``) are bounded by the DataLoader's own ``timeout`` instead. A plain
``TensorDataset`` is never watched: indexing tensors cannot hang.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import weakref
from typing import Any, Iterator

from torch.utils.data import Dataset, Subset, TensorDataset

SAMPLE_TIMEOUT = 30.0       # seconds one sample may take to load, at most (NANDOCTOR_SAMPLE_TIMEOUT overrides)
MIN_SAMPLE_TIMEOUT = 5.0    # ... and at least, whatever the probe's share of the budget
TICK = 1.0                  # past the limit the timer ticks this often (also while user code swallows the error)
ENV_TIMEOUT = "NANDOCTOR_SAMPLE_TIMEOUT"


class Overrun(BaseException):
    """The code under a ``deadline`` block ran past it."""


_probe_deadline: float | None = None       # perf_counter() reading past which the running probe is stopped


def _signals_usable() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Raise ``Overrun`` inside the block once ``time.perf_counter()`` passes ``at`` (None: no limit).

    Nested blocks keep the earlier deadline. A no-op where signals cannot be used, or when the user's own
    code holds the real-time timer (the cooperative deadline of the training loop still applies).
    """
    global _probe_deadline
    if at is None or not _signals_usable():
        yield
        return
    if _probe_deadline is not None:  # nested: the earlier deadline rules, the outer comes back afterwards
        outer = _probe_deadline
        _probe_deadline = min(outer, at)
        try:
            yield
        finally:
            _probe_deadline = outer
        return
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        yield  # someone else's timer: leave it alone
        return
    left = at - time.perf_counter()
    if left <= 0:
        raise Overrun("the deadline had passed before the block started")
    previous = signal.signal(signal.SIGALRM, _alarm)
    _probe_deadline = at
    signal.setitimer(signal.ITIMER_REAL, min(TICK, left), TICK)
    try:
        yield
    finally:
        _probe_deadline = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class SampleTimeout(TimeoutError):
    """Loading one sample took longer than the watchdog allows. The user's data, not nandoctor."""

    user_fault = True

    def __init__(self, message: str, index: int | None = None, seconds: float | None = None):
        super().__init__(message)
        self.index, self.seconds = index, seconds


_timeout: float | None = None              # seconds per sample while a probe is watched, else None
_watched_thread: int | None = None         # the thread whose loading is watched (the main one)
_current: tuple | None = None              # (dataset, index, started, chunk) of the sample being loaded
_hung: "weakref.WeakKeyDictionary[Any, set[int]]" = weakref.WeakKeyDictionary()


def timeout_for(seconds: float) -> float:
    """The per-sample timeout for a probe allowed ``seconds``: its allowance, within [MIN, MAX]."""
    ceiling = float(os.environ.get(ENV_TIMEOUT) or SAMPLE_TIMEOUT)
    return min(ceiling, max(min(MIN_SAMPLE_TIMEOUT, ceiling), seconds))


@contextlib.contextmanager
def limit(seconds: float) -> Iterator[None]:
    """Watch the loading in this block with a ``seconds`` limit per sample (a no-op where signals cannot be used)."""
    global _timeout, _watched_thread
    if (_timeout is not None or not _signals_usable()
            or (_probe_deadline is None and signal.getitimer(signal.ITIMER_REAL)[0] > 0)):
        yield  # already watched, not the main thread, or the user's own code uses the real-time timer
        return
    ticking = _probe_deadline is not None  # a deadline's timer already ticks: share it
    previous = None if ticking else signal.signal(signal.SIGALRM, _alarm)
    _timeout, _watched_thread = float(seconds), threading.get_ident()
    try:
        yield
    finally:
        _timeout, _watched_thread = None, None
        if not ticking:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _alarm(signum, frame) -> None:
    if _probe_deadline is not None and time.perf_counter() > _probe_deadline:
        raise Overrun("stopped at its deadline")
    current = _current
    if current is None or _timeout is None:
        return
    dataset, index, started, chunk = current
    if time.perf_counter() - started < _timeout:  # a slow batch, but this sample is within its limit
        return
    if chunk:  # a whole chunk through __getitems__: which of its samples hangs is not known here
        raise SampleTimeout(f"loading samples {chunk[0]}..{chunk[-1]} (one call of __getitems__) took longer "
                            f"than {time.perf_counter() - started + _timeout:.0f} s", seconds=_timeout)
    _remember(dataset, index)
    raise SampleTimeout(f"loading sample {index} took longer than {_timeout:g} s (its __getitem__ hangs); "
                        "the probe loading it stopped", index=index, seconds=_timeout)


def _remember(dataset, index: int) -> None:
    try:
        _hung.setdefault(dataset, set()).add(index)
    except TypeError:  # a dataset that cannot be weakly referenced: not remembered
        pass


def hung(dataset) -> set[int]:
    """Indices of ``dataset`` whose loading timed out earlier in this process."""
    try:
        return _hung.get(dataset, set())
    except TypeError:
        return set()


def _watching() -> bool:
    return _timeout is not None and threading.get_ident() == _watched_thread


@contextlib.contextmanager
def _armed() -> Iterator[None]:
    """The timer for one batch: first at the limit, then every TICK until the batch is loaded."""
    global _current
    if _probe_deadline is not None:  # the deadline's timer ticks every TICK: it checks the sample too
        try:
            yield
        finally:
            _current = None
        return
    signal.setitimer(signal.ITIMER_REAL, _timeout, min(TICK, _timeout))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _current = None


def _one(dataset, index: int) -> Any:
    global _current
    if _hung and index in hung(dataset):
        raise SampleTimeout(f"sample {index} hung when it was loaded earlier in this run; not loaded again",
                            index=index, seconds=_timeout)
    _current = (dataset, index, time.perf_counter(), None)
    sample = dataset[index]
    _current = None  # between samples the timer's ticks are ignored
    return sample


def fetch(dataset, index: int) -> Any:
    """``dataset[index]``, under the timer while a probe is watched."""
    if not _watching():
        return _one(dataset, index)
    with _armed():
        return _one(dataset, index)


def fetch_batch(dataset, indices: list[int]) -> list:
    """``[dataset[i] for i in indices]`` under one timer (the first sample that raises ends the batch)."""
    if not _watching():
        return [_one(dataset, i) for i in indices]
    with _armed():
        return [_one(dataset, i) for i in indices]


def load_each(dataset, indices: list[int]) -> list[tuple[int, Any, Exception | None]]:
    """``(index, sample, None)`` or ``(index, None, the exception)`` for every index: a sample that raises or
    hangs is reported and the others still load (the data scan's way)."""
    out = []
    with (_armed() if _watching() else contextlib.nullcontext()):
        for i in indices:
            try:
                out.append((i, _one(dataset, i), None))
            except Exception as exc:
                out.append((i, None, exc))
    return out


def fetch_many(dataset, indices: list[int]) -> Any:
    """``dataset.__getitems__(indices)`` under one timer, with a limit of the per-sample one times the square
    root of the chunk's size (which sample hangs is not known here: callers fall back to ``load_each``)."""
    global _current
    if not _watching() or not indices:
        return dataset.__getitems__(indices)
    with _armed():
        allowance = _timeout * max(1, len(indices)) ** 0.5
        _current = (dataset, None, time.perf_counter() + allowance - _timeout, list(indices))
        return dataset.__getitems__(indices)


def loader_timeout() -> float:
    """The DataLoader ``timeout`` for worker processes (0: none) while a probe is watched."""
    return float(_timeout) * 4 if _timeout is not None else 0.0


class Watched(Dataset):
    """A map-style dataset seen through the watchdog: what the patient's DataLoaders load from."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return fetch(self.dataset, index)

    def __getitems__(self, indices: list[int]) -> list:  # a DataLoader batch: one timer for all of it
        if hasattr(self.dataset, "__getitems__"):  # the user's own batched loading
            return fetch_many(self.dataset, list(indices))
        return fetch_batch(self.dataset, list(indices))


def cannot_hang(dataset) -> bool:
    """A plain TensorDataset (or a Subset chain over one): loading is tensor indexing, nothing to watch."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return type(dataset) is TensorDataset


def watched(dataset) -> Dataset:
    """``dataset`` seen through the watchdog (itself when loading it cannot hang)."""
    return dataset if isinstance(dataset, Watched) or cannot_hang(dataset) else Watched(dataset)
