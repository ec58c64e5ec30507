"""``DevicePrefetcher``: batches prepared on a background thread, handed over in order with the
position the source had right after each one (what a checkpoint records), errors re-raised on
the training thread, and the thread stopped on close."""

from __future__ import annotations

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
