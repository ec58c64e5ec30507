"""Progress for every long loop: a tqdm bar on a terminal, periodic single lines in a log.

One class, ``Progress``. The loops that use it mostly run where stderr is a log file, not a
terminal (Ray workers and actors, ``ray job submit`` drivers), so it has two modes, picked by
``file.isatty()``:

* terminal: a plain ``tqdm`` bar (tqdm's own refresh rate), extra counters and their rates in
  the postfix;
* anything else: at most one line per ``every_s`` seconds, rendered with
  ``tqdm.format_meter`` (counts, elapsed, eta when the total is known, rates), e.g.
  ``news.jsonl: 1200 docs, 456000 tokens [00:10, 120 docs/s, 45600 tokens/s]``, plus one final
  line on close if an earlier line had been written and there is news since. Lines go to
  ``log`` at INFO when that logger is configured (has handlers), else to ``file`` (a bare Ray
  actor has no logging setup but Ray captures its stderr).

Why not the alternatives: tqdm itself, given a non-terminal file, still redraws with ``\\r``
and no newline (one endless "line" in a log file), and ``disable=None`` silences it entirely;
``mininterval`` bounds the redraw rate but not the ``\\r``. Overriding ``tqdm.display``/``close``
in a subclass works but leans on tqdm internals (``close`` writes a stray newline, a monitor
thread starts per process). ``tqdm.contrib.logging`` only reroutes log records around a bar,
it does not turn a bar into log lines. ``ray.experimental.tqdm_ray`` is experimental, needs a
Ray worker/driver (these loops also run serially in tests, benchmarks and the CLI) and writes
JSON control lines to stdout for the driver to redraw, which ends up as noise in job logs. So
the terminal gets tqdm as is and the log gets tqdm's formatting at a rate we control.

Usage (``update`` takes increments, as tqdm's does)::

    with Progress("prepare", total=len(items), unit="shards", every_s=10, log=log) as bar:
        for row in results:
            bar.update(1, docs=row["documents"], tokens=row["tokens"])
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["Progress"]


def _rate(r: float) -> str:
    return f"{r:.0f}" if r >= 100 else f"{r:.3g}"


def _isatty(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Counts ``n`` items of ``unit`` (plus any named extra counters) and reports them.

    ``desc`` names the loop (input file, shard, stage); ``total`` enables percentage and eta;
    ``every_s`` is the minimum gap between log lines (non-terminal mode only); ``log`` is the
    logger for those lines; ``file`` defaults to ``sys.stderr``; ``interactive`` overrides the
    TTY check; ``clock`` is for tests.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "it",
        *,
        every_s: float = 10.0,
        log: logging.Logger | None = None,
        file: IO[str] | None = None,
        interactive: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.log, self.file, self.clock = log, file if file is not None else sys.stderr, clock
        self.n = 0
        self.counts: dict[str, int] = {}
        self.t0 = self._last_line_t = clock()
        self._last_line_state: tuple | None = None  # (n, counts) of the last line written
        self.lines = 0  # log lines written (non-terminal mode)
        self.interactive = _isatty(self.file) if interactive is None else interactive
        self._bar = (
            tqdm(total=total, desc=desc, unit=unit, file=self.file, leave=True)
            if self.interactive
            else None
        )
        self._closed = False

    @property
    def elapsed(self) -> float:
        return self.clock() - self.t0

    def update(self, n: int = 1, **counts: int) -> None:
        """Add ``n`` items and the given amounts to the named extra counters."""
        self.n += n
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        if self._bar is not None:
            if counts:
                self._bar.set_postfix_str(self._counters_text(self.elapsed), refresh=False)
            self._bar.update(n)
            return
        now = self.clock()
        if now - self._last_line_t >= self.every_s:
            self._write_line(now)

    def close(self) -> None:
        """End the loop: closes the bar, or writes a last line if one was written before and
        the counts moved since."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            if self.counts:
                self._bar.set_postfix_str(self._counters_text(self.elapsed), refresh=False)
            self._bar.close()
        elif self.lines and self._last_line_state != self._state():
            self._write_line(self.clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # no "finished" line for a loop that failed
            self._closed = True
            if self._bar is not None:
                self._bar.close()

    def format_line(self, now: float | None = None) -> str:
        """The log line for the current counts (tqdm's meter, our rates)."""
        elapsed = max((self.clock() if now is None else now) - self.t0, 1e-9)
        extra = "".join(f", {v} {k}" for k, v in self.counts.items())
        rates = "".join(f", {_rate(v / elapsed)} {k}/s" for k, v in self.counts.items())
        if self.total:
            fmt = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%){extra} "
            fmt += "[{elapsed}<{remaining}, {main_rate} {unit}/s{rates}]"
        else:
            fmt = "{desc}: {n_fmt} {unit}{extra} [{elapsed}, {main_rate} {unit}/s{rates}]"
        return tqdm.format_meter(
            self.n,
            self.total,
            elapsed,
            prefix=self.desc,
            unit=self.unit,
            rate=self.n / elapsed,
            bar_format=fmt,
            extra=extra,
            rates=rates,
            main_rate=_rate(self.n / elapsed),
        )

    def _counters_text(self, elapsed: float) -> str:
        elapsed = max(elapsed, 1e-9)
        return ", ".join(f"{v} {k} ({_rate(v / elapsed)} {k}/s)" for k, v in self.counts.items())

    def _state(self) -> tuple:
        return (self.n, tuple(self.counts.items()))

    def _write_line(self, now: float) -> None:
        line = self.format_line(now)
        self._last_line_t, self._last_line_state = now, self._state()
        self.lines += 1
        if self.log is not None and self.log.hasHandlers():
            self.log.info("%s", line)
        else:
            self.file.write(line + "\n")
            self.file.flush()
