"""The application sequence as a feed's source: where each batch ends."""

from __future__ import annotations

import pytest

from ledger.dynamodb import CorruptNotificationBatchError
from ledger.feeds import IndexSource
from tests.test_corrupt_batches import DAMAGE, damage_batch, three_orders


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
