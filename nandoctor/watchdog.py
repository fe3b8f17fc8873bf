"""A watchdog on the user's data loading: a sample whose ``__getitem__`` hangs stops the probe that
loads it, with the sample's index, instead of hanging the whole run.

While a probe runs (inside ``limit(seconds)``), every sample nandoctor loads through ``fetch`` (the
patient's loaders and fixed batches go through ``watched(dataset)``; the data scan calls ``fetch``)
is loaded under a timer. When the timer fires, ``SampleTimeout`` is raised inside the user's
``__getitem__``, so its traceback ends at the line that hung; the index is remembered, and a later
probe that draws the same sample fails at once instead of waiting again.

The timer is ``SIGALRM`` (``setitimer``): it interrupts a ``sleep``, a blocking read or a Python loop,
and starts no thread. It only works in the main thread of a POSIX process; anywhere else (a notebook
running nandoctor in a thread, Windows) loading is not watched. DataLoader worker processes
(``num_workers > 0``) are bounded by the DataLoader's own ``timeout`` instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import weakref
from typing import Any, Iterator

from torch.utils.data import Dataset

SAMPLE_TIMEOUT = 30.0       # seconds one sample may take to load, at most (NANDOCTOR_SAMPLE_TIMEOUT overrides)
MIN_SAMPLE_TIMEOUT = 5.0    # ... and at least, whatever the probe's share of the budget
REPEAT_SECONDS = 1.0        # the alarm repeats while the user's code swallows it (``except Exception: retry``)
ENV_TIMEOUT = "NANDOCTOR_SAMPLE_TIMEOUT"


class SampleTimeout(TimeoutError):
    """Loading one sample took longer than the watchdog allows. The user's data, not nandoctor."""

    user_fault = True

    def __init__(self, message: str, index: int | None = None, seconds: float | None = None):
        super().__init__(message)
        self.index, self.seconds = index, seconds


_timeout: float | None = None                       # seconds per sample while a probe is watched, else None
_current: tuple[Any, int] | None = None             # (dataset, index) being loaded under the timer
_hung: "weakref.WeakKeyDictionary[Any, set[int]]" = weakref.WeakKeyDictionary()


def timeout_for(seconds: float) -> float:
    """The per-sample timeout for a probe allowed ``seconds``: its allowance, within [MIN, MAX]."""
    ceiling = float(os.environ.get(ENV_TIMEOUT) or SAMPLE_TIMEOUT)
    return min(ceiling, max(min(MIN_SAMPLE_TIMEOUT, ceiling), seconds))


def _can_watch() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def limit(seconds: float) -> Iterator[None]:
    """Watch every ``fetch`` in this block with a ``seconds`` timer (a no-op where signals cannot be used)."""
    global _timeout
    if _timeout is not None or not _can_watch() or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        yield  # already watched, not the main thread, or the user's own code uses the real-time timer
        return
    previous = signal.signal(signal.SIGALRM, _alarm)
    _timeout = float(seconds)
    try:
        yield
    finally:
        _timeout = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _alarm(signum, frame) -> None:
    current = _current
    if current is None:  # fired just after the sample returned
        return
    dataset, index = current
    if isinstance(index, list):  # a whole chunk through __getitems__: which sample is not known yet
        raise SampleTimeout(f"loading samples {index[0]}..{index[-1]} took longer than {_timeout:g} s",
                            index=None, seconds=_timeout)
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


def fetch(dataset, index: int) -> Any:
    """``dataset[index]``, under the timer while a probe is watched."""
    global _current
    if index in hung(dataset):
        raise SampleTimeout(f"sample {index} hung when it was loaded earlier in this run; not loaded again",
                            index=index, seconds=_timeout)
    if _timeout is None or not _can_watch():
        return dataset[index]
    _current = (dataset, index)
    signal.setitimer(signal.ITIMER_REAL, _timeout, REPEAT_SECONDS)
    try:
        return dataset[index]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _current = None


def fetch_many(dataset, indices: list[int]) -> Any:
    """``dataset.__getitems__(indices)`` under one timer for the chunk (the caller falls back to ``fetch``
    one sample at a time to find the one that hangs)."""
    global _current
    if _timeout is None or not _can_watch() or not indices:
        return dataset.__getitems__(indices)
    _current = (dataset, list(indices))
    signal.setitimer(signal.ITIMER_REAL, _timeout * max(1, len(indices)) ** 0.5, REPEAT_SECONDS)
    try:
        return dataset.__getitems__(indices)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _current = None


def loader_timeout() -> float:
    """The DataLoader ``timeout`` for worker processes (0: none) while a probe is watched."""
    return float(_timeout) * 4 if _timeout is not None else 0.0


class Watched(Dataset):
    """A map-style dataset seen through ``fetch``: what the patient's DataLoaders load from."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return fetch(self.dataset, index)


def watched(dataset) -> Dataset:
    return dataset if isinstance(dataset, Watched) else Watched(dataset)
