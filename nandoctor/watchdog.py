"""Hard deadlines: a probe or a cure that outruns its time is stopped, not waited for.

The training loop checks its deadline between steps; that is the ordinary stop. The
watchdog is the one for code that does not come back to the loop in time (a forward
pass far slower than measured, a ``__getitem__`` that sleeps): a ``SIGALRM`` timer
raises ``Overrun`` in the main thread at the deadline. ``Overrun`` derives from
``BaseException`` so that the user's own ``except Exception`` cannot swallow it. Where
there are no such signals (Windows, or a worker thread) the watchdog does nothing and
the cooperative deadline is all there is.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Iterator


class Overrun(BaseException):
    """The code under a ``deadline`` block ran past it."""


def _usable() -> bool:
    return hasattr(signal, "SIGALRM") and hasattr(signal, "setitimer") \
        and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Raise ``Overrun`` inside the block once ``time.perf_counter()`` passes ``at`` (None: no limit).

    Nested blocks keep the earlier of the two deadlines; the outer timer is restored on exit.
    """
    if at is None or not _usable():
        yield
        return
    left = at - time.perf_counter()
    if left <= 0:
        raise Overrun("the deadline had passed before the block started")
    previous_handler = signal.getsignal(signal.SIGALRM)
    previous_left, _ = signal.getitimer(signal.ITIMER_REAL)
    outer_at = time.perf_counter() + previous_left if previous_left > 0 else None
    if outer_at is not None and outer_at < at:  # the outer deadline comes first: it stays in charge
        yield
        return

    def fire(signum, frame):
        raise Overrun(f"stopped at its deadline ({left:.1f} s)")

    signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, left)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_at is not None:
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, outer_at - time.perf_counter()))
