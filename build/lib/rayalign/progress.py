"""Progress you can watch: a live line on a terminal, plain periodic lines anywhere else.

    with ProgressLine("sft", total=40, unit="step") as line:
        for ...:
            line.update(1, {"loss": 1.23, "tok/s": 512})

On a terminal the line is a tqdm bar (counts, rate, ETA and the latest values,
redrawn in place). When stdout is not a terminal (CI, ``ray job submit`` logs,
a file) it prints plain lines with no carriage return or escape code, at most
one every ``RAYALIGN_PROGRESS_INTERVAL_S`` seconds (default 30), plus the first
and the last::

    [sft] step 12/40 (30%) | 4.8 s/step | 57s elapsed, ETA 2m14s | loss 1.234, tok/s 512

``RAYALIGN_PROGRESS=plain`` asks for plain lines on a terminal too (the CLI's
``--verbose`` sets it: worker logs would tear a live bar). A background
heartbeat keeps the elapsed time moving while a slow item runs.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from tqdm import tqdm

PROGRESS_ENV = "RAYALIGN_PROGRESS"
"""``plain``: plain lines even on a terminal; ``live``: a tqdm bar even when not a terminal."""
INTERVAL_ENV = "RAYALIGN_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 30.0


def duration(seconds: float) -> str:
    """A short human duration.

    >>> [duration(s) for s in (4.2, 133, 3725)]
    ['4s', '2m13s', '1h02m']
    """
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_values(values: Mapping[str, object]) -> str:
    """``name value`` pairs, floats to 4 significant digits.

    >>> format_values({"loss": 1.23456, "tok/s": 512.0, "kept": 3})
    'loss 1.235, tok/s 512, kept 3'
    """
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def format_rate(per_s: float, unit: str) -> str:
    """Items per second, or seconds per item when slower than one a second.

    >>> format_rate(2.5, "answer"), format_rate(0.2, "step")
    ('2.50 answer/s', '5.0 s/step')
    """
    return f"{per_s:.2f} {unit}/s" if per_s >= 1 else f"{1 / per_s:.1f} s/{unit}"


def wants_live(stream: TextIO) -> bool:
    """A tqdm bar on a terminal, plain lines elsewhere; ``RAYALIGN_PROGRESS`` overrides."""
    choice = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if choice in ("plain", "live"):
        return choice == "live"
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"


def interval_s() -> float:
    """Seconds between plain lines (``RAYALIGN_PROGRESS_INTERVAL_S``, default 30)."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


class ProgressLine:
    """Counts of ``unit`` towards ``total`` (None: unknown), with rate, ETA and the latest values.

    ``initial`` items were done before (a resumed run): the rate counts only
    this run's. Thread-safe: a relay thread may update while the heartbeat ticks.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        unit: str = "item",
        initial: int = 0,
        values: Mapping[str, object] | None = None,
        stream: TextIO | None = None,
        live: bool | None = None,
        every_s: float | None = None,
        heartbeat: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.unit = label, total, unit
        self.initial = self.done = initial
        self.values: dict[str, object] = dict(values or {})
        self.stream = stream or sys.stdout
        self.live = wants_live(self.stream) if live is None else live
        self.every_s = interval_s() if every_s is None else every_s
        self.clock = clock
        self.started = clock()
        self._printed: tuple[float, int] | None = None  # (when, done) of the last plain line
        self._lock = threading.RLock()
        self._closed = False
        self._bar = None
        if self.live:
            self._bar = tqdm(
                total=total, initial=initial, desc=f"[{label}]", unit=unit, file=self.stream, dynamic_ncols=True
            )
            if self.values:
                self._bar.set_postfix_str(format_values(self.values))
        else:
            self._print()  # what is about to happen, before the first item takes minutes
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._beat, name=f"progress-{label}", daemon=True)
        if heartbeat:
            self._ticker.start()

    # ---------------------------------------------------------------- updates

    def update(self, n: int = 1, values: Mapping[str, object] | None = None) -> None:
        """``n`` more items done; ``values`` replace the shown ones of the same name."""
        with self._lock:
            self.set(self.done + n, values)

    def set(self, done: int, values: Mapping[str, object] | None = None) -> None:
        """``done`` items in all (a count read from elsewhere)."""
        with self._lock:
            if self._closed:
                return
            step, self.done = done - self.done, done
            self.values.update(values or {})
            if self._bar is not None:
                if values:
                    self._bar.set_postfix_str(format_values(self.values), refresh=False)
                if step:
                    self._bar.update(step)
                else:
                    self._bar.refresh()
            elif self._due() or (self.total is not None and done >= self.total):
                self._print()

    def tick(self) -> None:
        """Move the clock on: a plain line when one is due (the heartbeat calls this)."""
        with self._lock:
            if self._closed:
                return
            if self._bar is not None:
                self._bar.refresh()
            elif self._due():
                self._print()

    def close(self) -> None:
        """The last line (plain: unless the state was just printed); stops the heartbeat."""
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            elif self._printed is None or self._printed[1] != self.done:
                self._print()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- plain lines

    def rate(self) -> float | None:
        """Items per second of this run, None before the first."""
        elapsed = self.clock() - self.started
        counted = self.done - self.initial
        return counted / elapsed if counted > 0 and elapsed > 0 else None

    def eta_s(self) -> float | None:
        rate = self.rate()
        if rate is None or self.total is None:
            return None
        return max(0, self.total - self.done) / rate

    def text(self) -> str:
        """The plain line for the current state."""
        count = f"{self.unit} {self.done}"
        if self.total is not None:
            count += f"/{self.total} ({math.floor(100 * self.done / max(self.total, 1))}%)"
        rate, eta = self.rate(), self.eta_s()
        timing = f"{duration(self.clock() - self.started)} elapsed, ETA {'?' if eta is None else duration(eta)}"
        parts = [f"[{self.label}] {count}", format_rate(rate, self.unit) if rate else f"? {self.unit}/s", timing]
        if self.values:
            parts.append(format_values(self.values))
        return " | ".join(parts)

    def _due(self) -> bool:
        return self._printed is None or self.clock() - self._printed[0] >= self.every_s

    def _print(self) -> None:
        self.stream.write(self.text() + "\n")
        self.stream.flush()
        self._printed = (self.clock(), self.done)

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            self.tick()
