"""The binary layout of notification batches: each format written round-trips,
its checksum catches damage, batches of formats 1 and 2 written before still
read, and the unknown is refused."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ledger.dynamodb import CorruptNotificationBatchError, schema
from ledger.dynamodb.batches import (
    FORMAT,
    ROWS_FORMAT,
    WRITTEN_FORMATS,
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
# Format 3 stores a canonical UUID id as its bytes, any other id as text.
ids = (
    st.text(max_size=40)
    | st.uuids().map(str)
    | st.uuids().map(lambda u: str(u).upper())
)
format_3_entries = st.lists(
    st.builds(
        BatchEntry,
        ids | st.sampled_from(["0b7e6c1a-3f2d-4c5b-8a9e-1d2c3b4a5f60", "a"]),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.text(max_size=80) | st.sampled_from(["aggregates.order:Order.OrderPlaced"]),
        st.none() | st.binary(max_size=300) | st.sampled_from([b"", b'{"a":1}']),
    ),
    max_size=98,
)
compress = st.sampled_from([None, True, False])

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
FORMAT_2_BATCH = b"\x02" + FORMAT_1_BATCH[1:] + b"T#\xa9\xd9"  # its CRC-32, frozen
CONFIRMED = BatchEntry(
    PLACED["originator_id"], 3, "aggregates.order:Order.OrderConfirmed", None
)
FORMAT_3_PLAIN = (  # the two events and a pointer, not compressed, frozen
    b"\x03\x00\x01\x80"
    b"\x00\x03"  # events
    b"\x00\x03"  # topics
    b'\x00"aggregates.order:Order.OrderPlaced'
    b"\x00 aggregates.order:Order.ItemAdded"
    b"\x00%aggregates.order:Order.OrderConfirmed"
    b"\x00\x01"  # ids: one UUID, as its bytes
    b"\xff\xff\x0b~l\x1a?-L[\x8a\x9e\x1d,;J_`"
    b"\x00\x00\x00\x01\x00\x02"  # topics
    b"\x00\x00\x00\x00\x00\x00"  # ids
    b"\x00\x00\x00\x00\x00\x00\x00\x01"  # versions
    b"\x00\x00\x00\x00\x00\x00\x00\x02"
    b"\x00\x00\x00\x00\x00\x00\x00\x03"
    b"\x00\x00\x00\xaf\x00\x00\x00\\\xff\xff\xff\xff"  # state lengths
    + PLACED["state"].encode()
    + ADDED["state"].encode()
    + b"\xd0\x7f\x92\x8c"
)
FORMAT_3_COMPRESSED = bytes.fromhex(  # the same, compressed (by zlib 1.2), frozen
    "030001817d8f514ac4301086b3eea337100409f8d694b4ddaedbfa20223e288222faa242cd26"
    "d312689b98660591f5001ec22b78c43a5b15115c87e427f9f966f2878cc9985051550e2ae1a1"
    "0b8d53e0f2f39586835ed44282223b6b98130fcda15248ecae21862947a62db56b101bf5fde6"
    "4bbd75c0ce6e5fdfb683fdd3e29e1032221ba83f35fa3a7ebb63bcbfe3beebb19ea9d70d745e"
    "3496e634e671ca78c2a2c915cf72ce7185519c4cd2e90d0da871bad2adf0c615de582db1e1ef"
    "9cc8ca45e74d03aed00ab1a9ca4452ce80c5329ab309a425cbc49e62c91c0dc5212b67626872"
    "0e5af9841dc7d7972ba3165d573c82ebb469691e2fff8d1bfd8e6b9d510be93f13086b6bc089"
    "0f0bd17aedf18924a0d66909ab6f8729a7cb0f01b7fbd1"
)


@given(entries, positions)
def test_format_2_batches_round_trip(batch: list[BatchEntry], first: int) -> None:
    assert decode_batch(encode_batch(first, batch, ROWS_FORMAT), first) == batch


@given(format_3_entries, positions, compress)
def test_format_3_batches_round_trip(
    batch: list[BatchEntry], first: int, compressed: bool | None
) -> None:
    blob = encode_batch(first, batch, FORMAT, compress=compressed)

    assert blob[0] == FORMAT
    assert decode_batch(blob, first) == batch


@given(format_3_entries.filter(bool), positions, st.sampled_from(WRITTEN_FORMATS))
def test_batch_items_round_trip(
    batch: list[BatchEntry], first: int, batch_format: int
) -> None:
    item = batch_item(first, batch, schema.PAGE_SIZE, batch_format)

    assert item[schema.EVENTS]["B"][0] == batch_format
    assert read_batch_item(item, TABLE) == (first, batch)


def test_batch_items_are_written_in_format_3_unless_asked() -> None:
    item = batch_item(1, GOLDEN_ENTRIES, schema.PAGE_SIZE)

    assert item[schema.EVENTS]["B"][0] == FORMAT == 3


def test_a_format_that_is_not_written_is_refused() -> None:
    with pytest.raises(ValueError, match="format 2 or 3, not 1"):
        batch_item(1, GOLDEN_ENTRIES, schema.PAGE_SIZE, 1)


def test_format_3_stores_a_batch_of_200_byte_events_in_fewer_bytes_than_format_2() -> (
    None
):
    # Random states do not compress: the saving is the layout's own.
    draw = random.Random(3)
    batch = [
        BatchEntry(
            str(uuid.UUID(int=draw.getrandbits(128), version=4)),
            1,
            "aggregates.order:Order.OrderPlaced",
            draw.randbytes(200),
        )
        for _ in range(98)
    ]
    rows = len(encode_batch(1, batch, ROWS_FORMAT))
    columns = len(encode_batch(1, batch, FORMAT))

    assert rows / 98 > 280
    assert columns / 98 < 230


@given(
    st.lists(
        st.builds(
            BatchEntry,
            st.text(max_size=12) | st.uuids().map(str),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.text(max_size=20),
            st.none() | st.binary(max_size=40),
        ),
        min_size=1,
        max_size=4,
    ),
    positions,
    st.integers(min_value=1, max_value=255),
    st.sampled_from([(ROWS_FORMAT, None), (FORMAT, True), (FORMAT, False)]),
)
def test_every_changed_byte_of_a_batch_is_detected(
    batch: list[BatchEntry], first: int, change: int, layout: tuple[int, bool | None]
) -> None:
    batch_format, compressed = layout
    item = batch_item(first, batch, schema.PAGE_SIZE)
    blob = encode_batch(first, batch, batch_format, compress=compressed)

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
    blob = bytearray(encode_batch(3, GOLDEN_ENTRIES, compress=False))
    blob[blob.index(b'"quantity":3') + 11] = ord("7")
    item = batch_item(3, GOLDEN_ENTRIES, schema.PAGE_SIZE)
    item[schema.EVENTS] = {"B": bytes(blob)}

    with pytest.raises(CorruptNotificationBatchError) as raised:
        read_batch_item(item, TABLE)

    assert raised.value.last_position == 4
    assert "checksum mismatch" in raised.value.reason
    assert "skip-batch" in str(raised.value)


def test_a_format_2_batch_whose_format_byte_became_1_is_not_read_as_format_1() -> None:
    blob = encode_batch(1, GOLDEN_ENTRIES, ROWS_FORMAT)

    with pytest.raises(ValueError, match="cut short"):
        decode_batch(b"\x01" + blob[1:], 1)


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize(("other", "refusal"), [(1, "utf-8"), (2, "checksum mismatch")])
def test_a_format_3_batch_whose_format_byte_changed_is_not_read_as_another_format(
    compressed: bool, other: int, refusal: str
) -> None:
    blob = encode_batch(1, GOLDEN_ENTRIES, FORMAT, compress=compressed)

    with pytest.raises(ValueError, match=refusal):
        decode_batch(bytes([other]) + blob[1:], 1)


def test_a_format_2_batch_reads_as_it_always_did() -> None:
    assert decode_batch(FORMAT_2_BATCH, 1) == GOLDEN_ENTRIES


def test_format_3_writes_a_batch_as_it_was_frozen() -> None:
    assert encode_batch(1, [*GOLDEN_ENTRIES, CONFIRMED], compress=False) == (
        FORMAT_3_PLAIN
    )


@pytest.mark.parametrize("blob", [FORMAT_3_PLAIN, FORMAT_3_COMPRESSED])
def test_a_frozen_format_3_batch_reads(blob: bytes) -> None:
    assert decode_batch(blob, 1) == [*GOLDEN_ENTRIES, CONFIRMED]


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
        decode_batch(b"\x04" + encode_batch(1, GOLDEN_ENTRIES)[1:], 1)


def test_a_sequence_of_format_1_batches_then_format_3_ones_reads_through(orders):
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
    placed = orders.place_order(uuid.uuid4(), [])  # format 3, position 3

    notifications = orders.recorder.select_notifications(start=1, limit=10)

    assert [n.id for n in notifications] == [1, 2, 3]
    assert [
        BatchEntry(str(n.originator_id), n.originator_version, n.topic, n.state)
        for n in notifications[:2]
    ] == GOLDEN_ENTRIES
    assert notifications[2].originator_id == placed
    added = orders.mapper.to_domain_event(notifications[1])
    assert added.quantity == 3


def test_a_recorder_writes_the_format_it_is_given_and_reads_both(orders):
    recorder = orders.recorder
    recorder.batch_format = ROWS_FORMAT
    orders.place_order(uuid.uuid4(), [])  # position 1
    recorder.batch_format = FORMAT
    orders.place_order(uuid.uuid4(), [])  # position 2

    formats = [
        recorder.connection.call(
            "get_item",
            TableName=recorder.notifications_table_name,
            Key={schema.PAGE: {"N": "0"}, schema.POSITION: {"N": str(position)}},
            ConsistentRead=True,
        )["Item"][schema.EVENTS]["B"][0]
        for position in (1, 2)
    ]

    assert formats == [ROWS_FORMAT, FORMAT]
    assert [n.id for n in recorder.select_notifications(start=1, limit=10)] == [1, 2]
