"""``DevicePrefetcher``: batches prepared on a background thread, handed over in order with the
position the source had right after each one (what a checkpoint records), errors re-raised on
the training thread, and the thread stopped on close."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from distil.train.data import DevicePrefetcher


class Source:
    """An endless numbered source with a position counter, like ``EpochStream``."""

    def __init__(self, fail_at: int | None = None):
        self.taken, self.fail_at = 0, fail_at

    def __iter__(self):
        while True:
            if self.taken == self.fail_at:
                raise RuntimeError(f"unreadable row group at batch {self.taken}")
            self.taken += 1
            yield {"x": torch.tensor([self.taken]), "n": self.taken}


def test_items_come_in_order_with_the_position_after_each_one():
    src = Source()
    pre = DevicePrefetcher(
        iter(src), torch.device("cpu"), prepare=lambda b: {**b, "x": b["x"] * 10},
        position_of=lambda: src.taken, depth=2,
    )  # fmt: skip
    got = [next(pre) for _ in range(5)]
    time.sleep(0.2)  # the thread reads ahead of what was consumed
    assert src.taken > 5
    assert [int(b["x"]) for b, _ in got] == [10, 20, 30, 40, 50]
    assert [pos for _, pos in got] == [1, 2, 3, 4, 5]  # not the source's current count
    assert [b["n"] for b, _ in got] == [1, 2, 3, 4, 5]  # host values pass through
    pre.close()
    assert not pre.thread.is_alive()


def test_a_source_error_is_raised_on_the_training_thread():
    pre = DevicePrefetcher(iter(Source(fail_at=2)), torch.device("cpu"))
    next(pre), next(pre)
    with pytest.raises(RuntimeError, match="unreadable row group at batch 2"):
        next(pre)
    pre.close()


def test_batch_n_is_handed_out_without_waiting_for_batch_n_plus_1():
    """The step on batch n must not wait for batch n+1 to be read: ``__next__`` takes n+1 (and
    issues its device copy) only if it is already queued."""
    release = threading.Event()

    def slow_second():
        yield {"x": torch.tensor([1])}
        release.wait(30)  # batch 2 is still being read
        yield {"x": torch.tensor([2])}

    pre = DevicePrefetcher(slow_second(), torch.device("cpu"))
    t0 = time.perf_counter()
    first, _ = next(pre)
    assert int(first["x"]) == 1 and time.perf_counter() - t0 < 10
    release.set()
    second, _ = next(pre)
    assert int(second["x"]) == 2
    assert pre.waits >= 1 and pre.waited_s >= 0  # it waited for batch 1 at least
    pre.close()


def test_the_thread_reads_depth_batches_ahead_of_the_one_being_trained_on():
    src = Source()
    pre = DevicePrefetcher(iter(src), torch.device("cpu"), position_of=lambda: src.taken, depth=3)
    next(pre)
    deadline = time.time() + 10
    while src.taken < 1 + 3 + 1 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    # batch 1 handed out, 3 in the queue, one more taken and waiting for room (and batch 2
    # already taken off the queue if it was there when batch 1 was handed out)
    assert 5 <= src.taken <= 6
    pre.close()
