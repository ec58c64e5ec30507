"""distil.progress: periodic single lines when the output is not a terminal, a bar when it is."""

from __future__ import annotations

import io
import logging

from distil.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_non_tty_lines_are_periodic_and_carry_the_counts():
    clock, out = FakeClock(), io.StringIO()
    with Progress("news.jsonl", unit="docs", every_s=10, file=out, clock=clock) as bar:
        for _ in range(6400):  # 100 s of updates, one every 1/64 s (exact in binary)
            clock.t += 1 / 64
            bar.update(2, tokens=300)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # one line per 10 s (at 10, 20, ... 100 s): the last is the final state, so no extra line
    assert len(lines) == 10
    assert all(line.startswith("news.jsonl: ") for line in lines)
    assert lines[0] == "news.jsonl: 1280 docs, 192000 tokens [00:10, 128 docs/s, 19200 tokens/s]"
    assert lines[-1] == (
        "news.jsonl: 12800 docs, 1920000 tokens [01:40, 128 docs/s, 19200 tokens/s]"
    )


def test_non_tty_with_total_reports_fraction_eta_and_extra_counter_rates():
    clock, out = FakeClock(), io.StringIO()
    with Progress("prepare", total=4, unit="shards", every_s=5, file=out, clock=clock) as bar:
        for _ in range(4):
            clock.t += 20
            bar.update(1, docs=10, tokens=2000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # every update was > every_s after the last line; no extra close line
    assert lines[1] == (
        "prepare: 2/4 shards (50%), 20 docs, 4000 tokens "
        "[00:40<00:40, 0.05 shards/s, 0.5 docs/s, 100 tokens/s]"
    )


def test_short_loop_writes_nothing_and_a_failed_loop_no_final_line():
    clock, out = FakeClock(), io.StringIO()
    with Progress("tiny", unit="rows", every_s=10, file=out, clock=clock) as bar:
        for _ in range(1000):
            bar.update()
    assert out.getvalue() == ""
    try:
        with Progress("boom", unit="rows", every_s=1, file=out, clock=clock) as bar:
            clock.t += 2
            bar.update(5)  # one periodic line
            bar.update(5)
            raise RuntimeError("x")
    except RuntimeError:
        pass
    assert out.getvalue().splitlines() == ["boom: 5 rows [00:02, 2.5 rows/s]"]


def test_lines_go_to_a_configured_logger(caplog):
    clock, out = FakeClock(), io.StringIO()
    log = logging.getLogger("distil.test_progress")
    with (
        caplog.at_level(logging.INFO, logger=log.name),
        Progress("s", unit="rows", every_s=1, log=log, file=out, clock=clock) as bar,
    ):
        for _ in range(5):
            clock.t += 1
            bar.update(1)
    assert out.getvalue() == ""
    assert [r.getMessage() for r in caplog.records if r.name == log.name][-1].startswith(
        "s: 5 rows [00:05"
    )


def test_tty_is_a_tqdm_bar():
    out = io.StringIO()
    with Progress("x", total=3, unit="rows", file=out, interactive=True) as bar:
        bar.update(3, tokens=7)
    text = out.getvalue()
    assert "\r" in text and "3/3" in text and "7 tokens" in text
    assert bar.lines == 0


def test_close_writes_the_final_counts_once_when_they_moved_since_the_last_line():
    clock, out = FakeClock(), io.StringIO()
    with Progress("s", total=9, unit="rows", every_s=10, file=out, clock=clock) as bar:
        for _ in range(9):  # updates at 3, 6, ... 27 s: lines at 12 and 24 s, then the close
            clock.t += 3
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == [
        "s: 4/9 rows (44%)",
        "s: 8/9 rows (89%)",
        "s: 9/9 rows (100%)",
    ]
    bar.close()  # idempotent
    assert len(out.getvalue().splitlines()) == 3
