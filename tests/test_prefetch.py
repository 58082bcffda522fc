"""The prefetch thread: same items in order, produced ahead, errors raised at their item, early exit stops it."""

from __future__ import annotations

import threading
import time

import pytest

from dctdiff.training.prefetch import prefetched


def test_items_arrive_in_order_and_all():
    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))
    assert list(prefetched(iter([]))) == []


def test_the_next_items_are_produced_while_the_consumer_works():
    produced = []
    two_ahead = threading.Event()

    def items():
        for i in range(10):
            produced.append(i)
            if len(produced) == 3:
                two_ahead.set()
            yield i

    stream = prefetched(items(), depth=2)
    assert next(stream) == 0
    assert two_ahead.wait(timeout=30)  # items 1 and 2 were made while item 0 was being used
    assert list(stream) == list(range(1, 10))


def test_an_error_of_the_iterator_is_raised_at_its_item():
    def items():
        yield 1
        yield 2
        raise KeyError("row 3 is broken")

    stream = prefetched(items())
    assert [next(stream), next(stream)] == [1, 2]
    with pytest.raises(KeyError, match="row 3 is broken"):
        next(stream)


def test_leaving_early_stops_the_thread_and_the_iterator():
    pulled = []

    def items():
        for i in range(1000):
            pulled.append(i)
            yield i

    for item in prefetched(items(), depth=2):
        if item == 1:
            break
    deadline = time.monotonic() + 30
    while any(t.name == "dctdiff-prefetch" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "dctdiff-prefetch" for t in threading.enumerate())
    assert len(pulled) <= 5  # the two consumed, at most depth queued, one in hand


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        next(prefetched(iter([1]), depth=0))
