"""Progress of long work: a tqdm bar on a terminal, periodic one-line reports otherwise.

On a terminal, :func:`progress` is a tqdm bar (rate and ETA); log records are routed through
tqdm while it is shown, so an INFO line never lands on the bar's line. When stderr is not a
terminal (a batch job, CI, ``| tee``), a bar would print nothing useful for minutes, so it
prints one line every ``LEADER_PROGRESS_EVERY`` seconds (default 30) instead::

    stage 1: 120/800 steps (15%), 2.10 steps/s, ETA 5m24s, epoch 2/10, loss 0.1234

and one line when the work ends. ``LEADER_PROGRESS=off`` silences both.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["progress", "Progress", "fmt_seconds"]


def fmt_seconds(s: float) -> str:
    """``75.3`` → ``1m15s``; ``3725`` → ``1h02m``."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int((s % 3600) // 60):02d}m"


class Progress:
    """A progress report over ``total`` units (see the module docstring).

    Args:
        total: number of units (steps, images); ``None`` when unknown.
        desc: what is being done, e.g. ``"stage 1"``.
        unit: the unit's name (``"step"``, ``"img"``).
        initial: units already done (a resumed run).
        disable: no output at all (e.g. ranks other than 0).
        every: seconds between lines when stderr is not a terminal.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "step", initial: int = 0,
                 disable: bool = False, every: float | None = None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, int(initial)
        off = disable or os.environ.get("LEADER_PROGRESS", "").lower() in ("off", "0", "no")
        self.tty = sys.stderr.isatty()
        self.every = float(every if every is not None else os.environ.get("LEADER_PROGRESS_EVERY", 30))
        self.info: dict[str, Any] = {}
        self._bar = None
        self._redirect = None
        self._off = off
        self._t0 = self._last = time.monotonic()
        self._n0 = self.n
        if not off and self.tty:
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def update(self, n: int = 1, **info: Any) -> None:
        """Count ``n`` more units; ``info`` (e.g. ``epoch="2/10"``, ``loss=0.12``) is shown beside."""
        self.n += int(n)
        self.info.update(info)
        if self._off:
            return
        if self._bar is not None:
            self._bar.update(n)
            if info:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.info.items()}, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        """The one-line report: done/total, percentage, rate, ETA and the extra info."""
        dt = max(time.monotonic() - self._t0, 1e-9)
        rate = (self.n - self._n0) / dt
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total} {self.unit}s" if self.total else f" {self.unit}s")]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.2f} {self.unit}s/s")
        if self.total and rate > 0:
            parts.append(f"ETA {fmt_seconds((self.total - self.n) / rate)}")
        parts += [f"{k} {_fmt(v)}" for k, v in self.info.items()]
        return ", ".join(parts)

    def close(self) -> None:
        """End the report (the non-terminal form prints a last line with the elapsed time)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            if self._redirect is not None:
                self._redirect.__exit__(None, None, None)
                self._redirect = None
        elif not self._off and self.n > self._n0:
            print(f"{self.line()}, done in {fmt_seconds(time.monotonic() - self._t0)}", file=sys.stderr, flush=True)
            self._off = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@contextmanager
def progress(total: int | None, desc: str, unit: str = "step", **kw: Any):
    """``with progress(n, "stage 1") as p: ... p.update(1, loss=0.1)`` (see :class:`Progress`)."""
    p = Progress(total, desc, unit, **kw)
    try:
        yield p
    finally:
        p.close()


logging.getLogger(__name__).addHandler(logging.NullHandler())
