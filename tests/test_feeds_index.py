"""The application sequence as a feed's source: where each batch ends."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from ledger.dynamodb import CorruptNotificationBatchError
from ledger.feeds import IndexSource
from tests.test_corrupt_batches import DAMAGE, ITEM, damage_batch, three_orders


def test_a_page_cut_short_by_an_unreadable_batch_ends_before_it_not_at_the_head(
    orders,
):
    three_orders(orders)  # batches of positions 1-2, 3-4, 5-6
    damage_batch(orders, 4, **DAMAGE["truncated bytes"])
    batches = IndexSource(orders, page_size=100).batches(0)

    first = next(batches)

    assert [item.position for item in first.items] == [1, 2]
    assert (first.checkpoint, first.head) == (2, 6)
    with pytest.raises(CorruptNotificationBatchError) as raised:
        next(batches)
    assert raised.value.last_position == 4


def test_a_filtered_page_cut_short_by_an_unreadable_batch_ends_before_it(orders):
    three_orders(orders)  # each: an order placed, then its item added
    [placed] = orders.recorder.select_notifications(start=1, limit=1)
    damage_batch(orders, 4, **DAMAGE["truncated bytes"])
    batches = IndexSource(orders, page_size=100).batches(0, topics=[placed.topic])

    first = next(batches)

    assert [item.position for item in first.items] == [1]
    assert first.checkpoint == 1
    with pytest.raises(CorruptNotificationBatchError):
        next(batches)


def test_a_filtered_page_short_of_the_head_is_followed_by_a_read_to_the_head(orders):
    three_orders(orders)
    [placed] = orders.recorder.select_notifications(start=1, limit=1)

    batches = list(IndexSource(orders).batches(0, topics=[placed.topic]))

    assert [[item.position for item in b.items] for b in batches] == [[1, 3, 5], []]
    assert [b.checkpoint for b in batches] == [5, 6]


class WatchedReads:
    """The page reads of a recorder: in which thread each ran, and how long."""

    def __init__(self, recorder: Any) -> None:
        self.select = recorder.select_notifications
        self.started: list[tuple[int, int]] = []
        """(start, thread) of each read, as it begins."""
        self.seconds: list[float] = []
        """How long each read that returned took."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.started.append((kwargs["start"], threading.get_ident()))
        began = time.perf_counter()
        page = self.select(*args, **kwargs)
        self.seconds.append(time.perf_counter() - began)
        return page


def poll(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Wait until ``condition`` holds (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_a_consumer_slower_than_the_reads_has_the_next_page_read_meanwhile(
    orders, monkeypatch
):
    for _ in range(6):  # a batch of two events each: positions 1 to 12
        orders.place_order(uuid.uuid4(), [ITEM])
    reads = WatchedReads(orders.recorder)
    monkeypatch.setattr(orders.recorder, "select_notifications", reads)
    consumer = threading.get_ident()
    pages: list[list[int]] = []
    read_ahead: list[bool] = []

    for batch in IndexSource(orders, page_size=2).batches(0):
        pages.append([item.position for item in batch.items])
        if len(pages) == 1:
            # Slower over the first page than its read: reading ahead starts.
            until = time.perf_counter() + 2 * reads.seconds[0]
            assert poll(lambda at=until: time.perf_counter() > at)
        elif batch.checkpoint < batch.head:
            # The next page's read begins while this one is still in hand.
            after = batch.checkpoint + 1
            read_ahead.append(poll(lambda at=after: at in dict(reads.started)))

    assert pages == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]]
    assert reads.started[:2] == [(1, consumer), (3, consumer)]
    assert all(thread != consumer for _, thread in reads.started[2:])
    assert read_ahead == [True] * 4


def test_a_consumer_that_keeps_up_reads_the_first_page_in_its_own_thread(
    orders, monkeypatch
):
    three_orders(orders)
    reads = WatchedReads(orders.recorder)
    monkeypatch.setattr(orders.recorder, "select_notifications", reads)

    pages = [
        [item.position for item in batch.items]
        for batch in IndexSource(orders, page_size=2).batches(0)
    ]

    assert pages == [[1, 2], [3, 4], [5, 6]]
    assert reads.started[0] == (1, threading.get_ident())
