"""The binary layout of notification batches: it round-trips, its checksum
catches damage, format 1 batches written before the checksum still read, and
the unknown is refused."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ledger.dynamodb import CorruptNotificationBatchError, schema
from ledger.dynamodb.batches import (
    BatchEntry,
    batch_item,
    decode_batch,
    encode_batch,
    read_batch_item,
)

TABLE = "app_notifications"

entries = st.lists(
    st.builds(
        BatchEntry,
        st.text(max_size=40),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.text(max_size=80),
        st.none() | st.binary(max_size=300),
    ),
    max_size=98,
)
# Positions a sequence reaches in practice (a save a millisecond for 24 days).
positions = st.integers(min_value=1, max_value=2**31 - 1)

GOLDEN = Path(__file__).parent / "golden"
PLACED = json.loads((GOLDEN / "order_placed_v2.json").read_text())
ADDED = json.loads((GOLDEN / "item_added_v1.json").read_text())
GOLDEN_ENTRIES = [
    BatchEntry(PLACED["originator_id"], 1, PLACED["topic"], PLACED["state"].encode()),
    BatchEntry(ADDED["originator_id"], 2, ADDED["topic"], ADDED["state"].encode()),
]
FORMAT_1_BATCH = (  # as ledger wrote a save of those two events, frozen
    b"\x01"
    b"\x00$0b7e6c1a-3f2d-4c5b-8a9e-1d2c3b4a5f60"
    b"\x00\x00\x00\x00\x00\x00\x00\x01"
    b'\x00"aggregates.order:Order.OrderPlaced'
    b"\x00\x00\x00\xaf"
    + PLACED["state"].encode()
    + b"\x00$0b7e6c1a-3f2d-4c5b-8a9e-1d2c3b4a5f60"
    b"\x00\x00\x00\x00\x00\x00\x00\x02"
    b"\x00 aggregates.order:Order.ItemAdded"
    b"\x00\x00\x00\\" + ADDED["state"].encode()
)
FORMAT_1_POINTER = (  # an event whose state was left in the events table
    b"\x01"
    b"\x00$0b7e6c1a-3f2d-4c5b-8a9e-1d2c3b4a5f60"
    b"\x00\x00\x00\x00\x00\x00\x00\x03"
    b"\x00%aggregates.order:Order.OrderConfirmed"
    b"\xff\xff\xff\xff"
)


@given(entries, positions)
def test_batches_round_trip(batch: list[BatchEntry], first: int) -> None:
    assert decode_batch(encode_batch(first, batch), first) == batch


@given(entries.filter(bool), positions)
def test_batch_items_round_trip(batch: list[BatchEntry], first: int) -> None:
    assert read_batch_item(batch_item(first, batch, schema.PAGE_SIZE), TABLE) == (
        first,
        batch,
    )


@given(
    st.lists(
        st.builds(
            BatchEntry,
            st.text(max_size=12),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.text(max_size=20),
            st.none() | st.binary(max_size=40),
        ),
        min_size=1,
        max_size=4,
    ),
    positions,
    st.integers(min_value=1, max_value=255),
)
def test_every_changed_byte_of_a_batch_is_detected(
    batch: list[BatchEntry], first: int, change: int
) -> None:
    item = batch_item(first, batch, schema.PAGE_SIZE)
    blob = item[schema.EVENTS]["B"]

    for index in range(len(blob)):
        damaged = bytearray(blob)
        damaged[index] ^= change
        item[schema.EVENTS] = {"B": bytes(damaged)}
        with pytest.raises(CorruptNotificationBatchError):
            read_batch_item(item, TABLE)


@pytest.mark.parametrize(
    ("first", "page_size", "page"),
    [
        (1, 1_000, 0),
        (995, 1_000, 1),
        (990, 1_000, 0),
        (991, 1_000, 1),
        (995, 100_000, 0),
    ],
)
def test_a_batch_is_filed_on_the_page_of_its_last_position(
    first: int, page_size: int, page: int
) -> None:
    entries = [GOLDEN_ENTRIES[0]._replace(version=v) for v in range(1, 11)]

    item = batch_item(first, entries, page_size)

    assert item[schema.PAGE] == {"N": str(page)}
    assert item[schema.POSITION] == {"N": str(first + 9)}


@given(entries.filter(bool), positions, positions, st.sampled_from(["first", "last"]))
def test_a_changed_position_of_a_batch_is_detected(
    batch: list[BatchEntry], first: int, other: int, attribute: str
) -> None:
    item = batch_item(first, batch, schema.PAGE_SIZE)
    name = schema.FIRST_POSITION if attribute == "first" else schema.POSITION
    assume(int(item[name]["N"]) != other)
    item[name] = {"N": str(other)}

    with pytest.raises(CorruptNotificationBatchError):
        read_batch_item(item, TABLE)


def test_a_checksum_mismatch_says_what_changed() -> None:
    blob = bytearray(encode_batch(3, GOLDEN_ENTRIES))
    blob[blob.index(b'"quantity":3') + 11] = ord("7")
    item = batch_item(3, GOLDEN_ENTRIES, schema.PAGE_SIZE)
    item[schema.EVENTS] = {"B": bytes(blob)}

    with pytest.raises(CorruptNotificationBatchError) as raised:
        read_batch_item(item, TABLE)

    assert raised.value.last_position == 4
    assert "checksum mismatch" in raised.value.reason
    assert "skip-batch" in str(raised.value)


def test_a_format_2_batch_whose_format_byte_became_1_is_not_read_as_format_1() -> None:
    blob = encode_batch(1, GOLDEN_ENTRIES)

    with pytest.raises(ValueError, match="cut short"):
        decode_batch(b"\x01" + blob[1:], 1)


def test_a_format_1_batch_reads_as_it_always_did() -> None:
    assert decode_batch(FORMAT_1_BATCH, 1) == GOLDEN_ENTRIES
    assert decode_batch(FORMAT_1_POINTER, 3) == [
        BatchEntry(
            PLACED["originator_id"], 3, "aggregates.order:Order.OrderConfirmed", None
        )
    ]


def test_a_format_1_batch_cut_inside_its_last_state_is_refused() -> None:
    with pytest.raises(ValueError, match="event 2 is cut short"):
        decode_batch(FORMAT_1_BATCH[:-5], 1)


def test_unknown_format_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="Upgrade ledger"):
        decode_batch(b"\x03", 1)


def test_a_sequence_of_format_1_batches_then_format_2_ones_reads_through(orders):
    orders.recorder.connection.call(
        "put_item",
        TableName=orders.recorder.notifications_table_name,
        Item={
            schema.PAGE: {"N": "0"},
            schema.POSITION: {"N": "2"},
            schema.FIRST_POSITION: {"N": "1"},
            schema.EVENTS: {"B": FORMAT_1_BATCH},
        },
    )
    orders.recorder.connection.call(
        "put_item",
        TableName=orders.recorder.notifications_table_name,
        Item={
            schema.PAGE: {"N": str(schema.SEQUENCE_PAGE)},
            schema.POSITION: {"N": "0"},
            schema.LAST_POSITION: {"N": "2"},
        },
    )
    placed = orders.place_order(uuid.uuid4(), [])  # format 2, position 3

    notifications = orders.recorder.select_notifications(start=1, limit=10)

    assert [n.id for n in notifications] == [1, 2, 3]
    assert [
        BatchEntry(str(n.originator_id), n.originator_version, n.topic, n.state)
        for n in notifications[:2]
    ] == GOLDEN_ENTRIES
    assert notifications[2].originator_id == placed
    added = orders.mapper.to_domain_event(notifications[1])
    assert added.quantity == 3
