"""The notification batch: one save's events as one item of the notifications table.

A batch item holds all the events of one save as ONE binary attribute rather
than a DynamoDB list of maps: botocore parses nested attribute values one
shape at a time, which made reading the application sequence about six times
slower than scanning the events table; one binary value is parsed at once.

Every writer of the application sequence (the ``sequence`` ordering's
recorder, and anything else that appends to a notifications table) makes its
items with :func:`batch_item`, and readers check them with
:func:`read_batch_item`; :func:`encode_batch` and :func:`decode_batch` are the
binary attribute alone.

Layout of the ``events`` attribute (big-endian), format 3, written now: each
batch's events in columns, every topic and aggregate id written once::

    u8  format (3)
    u16 1, then u8 flags (0x80, plus 0x01 when the body is compressed): read
        as format 1 these frame an id of one byte that is not UTF-8, so a
        format 3 batch whose format byte is changed to 1 is refused
    the body, as it is or compressed (raw DEFLATE, ``zlib`` with wbits -15,
    kept only when smaller):
        u16 number of events (n)
        u16 number of topics, then each: u16 length + UTF-8
        u16 number of aggregate ids, then each: u16 length + UTF-8, or
            u16 0xFFFF + 16 bytes when the id is a UUID in canonical form
        n x u16 topic (index into the topics)
        n x u16 aggregate id (index into the ids)
        n x i64 version
        n x u32 state length, or 0xFFFFFFFF: not inline (read the state from
            the events table)
        the inline states, one after the other
    u32 CRC-32 of the batch's first position (i64) followed by every byte above

Format 3 stores what format 2 stores, in fewer bytes: about 50 bytes less per
event whose state does not compress (a topic once per batch, a UUID id in 16
bytes and once per batch), and far less where states compress (the mapper's
JSON, whose keys repeat from event to event: about a fifth of format 2's
bytes for the example's Order events; ``benchmarks/bench_indexed.py`` part
5). An item's format is its first byte, so one table holds items of every
format.

Format 2, written before::

    u8  format (2)
    then per event, in position order:
    u16 length + UTF-8 aggregate id
    i64 version
    u16 length + UTF-8 topic
    u32 length + state bytes, or u32 0xFFFFFFFF: state not inline (a pointer;
        read it from the events table)
    u32 CRC-32 of the batch's first position (i64) followed by every byte above

The checksum (formats 2 and 3) covers all a reader takes from the item: the
first position (stored in its own attribute), the number of events, and each
event's id, version, topic and state or pointer mark; in format 3 it covers
the stored bytes, so damage is found before anything is decompressed. The
last position (the item's key) is checked against the first position and the
number of events.

Format 1, written before format 2, is format 2 without the checksum. It is
still read, but only damage to its framing is detected in it (a truncated or
overlong event, bytes that are not UTF-8, a number of events that does not
match its positions): a changed byte inside a state, id or version reads as
valid.

A ledger that reads formats 1 and 2 only refuses a format 3 item as it
refuses any damaged one: :class:`CorruptNotificationBatchError` ("Notification
batch has format 3; this ledger reads formats 1 and 2. Upgrade ledger to read
it."), so its readers stop there, never skip it. Upgrade every reader of a
notifications table before its writers; until then, writers can keep writing
format 2 (``batch_format`` of :func:`batch_item`, the recorders'
``batch_format``).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Final, NamedTuple, TypeAlias

from eventsourcing.persistence import DataError

from ledger.dynamodb import schema
from ledger.dynamodb.limits import MAX_ITEM_BYTES, item_size

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

    Item: TypeAlias = dict[str, AttributeValueTypeDef]

FORMAT: Final = 3
"""The layout version written by default: the events in columns, checksummed."""
ROWS_FORMAT: Final = 2
"""The layout written before format 3, one event after another; still read,
and written when asked (for readers that know formats 1 and 2 only)."""
UNCHECKED_FORMAT: Final = 1
"""The layout written before the checksum existed; still read."""
WRITTEN_FORMATS: Final = (ROWS_FORMAT, FORMAT)
"""The formats :func:`batch_item` writes on request."""
NOT_INLINE: Final = 0xFFFFFFFF
"""State length marking an event whose state is kept only in the events table."""

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_I64 = struct.Struct(">q")
_U32 = struct.Struct(">I")
_CHECKSUM_BYTES = _U32.size
# The checksum is CRC-32 (zlib's, the IEEE polynomial; CRC-32C is not in the
# standard library). It is there for accidental damage: a tool or a hand edit
# rewriting an item, a faulty restore or copy. It detects every change within
# 32 consecutive bits, so every changed byte, and misses random damage once
# in 2**32. It is not a MAC: whoever may write the notifications table can
# write a matching checksum, but could as well rewrite the events table, the
# source of truth, so a keyed MAC would add a key to every reader and writer
# and protect nothing more. It comes last so that a format 2 item whose
# format byte is changed to 1 cannot be read as format 1: its last four
# bytes are too short to be an event (at least 16 bytes).

_GUARD = _U16.pack(1)  # format 3's second and third bytes (see the layout)
_FLAGS = 0x80  # set in every flags byte: never a UTF-8 string of one byte
_COMPRESSED = 0x01
_HEADER_BYTES = 1 + len(_GUARD) + 1
_UUID_ID = 0xFFFF  # an id length marking a UUID stored as its 16 bytes
_UUID_TEXT = 36  # characters of a UUID's canonical text
_UUID_BYTES = 16
_MAX_COUNT = 0xFFFF  # events, topics or ids in one format 3 batch
# Raw DEFLATE (no zlib header or Adler-32: the CRC-32 covers the bytes), at
# level 1: on batches of the example's Order events it leaves about 10% more
# than level 6 (20 against 18 bytes an event) in half the time, and the
# indexer compresses each batch twice (to fit its transaction, then to write).
_WBITS = -15
_LEVEL = 1


class BatchEntry(NamedTuple):
    """One event of a batch: its key, topic, and state (None if not inline)."""

    aggregate_id: str
    version: int
    topic: str
    state: bytes | None


class CorruptNotificationBatchError(DataError):
    """A notification batch item of the application sequence cannot be read.

    Its events are intact in the events table (each event item holds its
    position); only the batch item that lists them is damaged. Readers of the
    sequence cannot go past it by themselves: nothing may be skipped silently.
    """

    def __init__(self, table_name: str, last_position: int, reason: str) -> None:
        """Describe the batch ending at ``last_position`` and what is wrong with it."""
        self.table_name = table_name
        self.last_position = last_position
        self.reason = reason
        super().__init__(
            f"The notification batch ending at position {last_position} in table "
            f"{table_name!r} cannot be read ({reason}). Its events are intact in "
            "the events table. A projection stopped here goes past it with "
            "`ledger projections skip-batch NAME --position P` (P = the "
            "projection's position + 1), which applies those events from the "
            "events table instead; a rebuild can read the events table with "
            "--source scan."
        )


def batch_item(
    first_position: int,
    entries: Sequence[BatchEntry],
    page_size: int,
    batch_format: int = FORMAT,
) -> Item:
    """Return the notifications-table item of events from ``first_position`` on.

    ``entries`` carry their states; ``page_size`` is the table's
    (``schema.POSITIONS_PER_PAGE``); ``batch_format`` one of
    :data:`WRITTEN_FORMATS` (format 2 for readers older than format 3). When
    the item with the states would pass DynamoDB's item limit, it holds
    pointers instead (readers fetch those states from the events table), so
    DynamoDB's own limits stay the only ones.
    """
    last_position = first_position + len(entries) - 1
    item: Item = {
        schema.PAGE: {"N": str(schema.page_of(last_position, page_size))},
        schema.POSITION: {"N": str(last_position)},
        schema.FIRST_POSITION: {"N": str(first_position)},
        schema.EVENTS: {"B": encode_batch(first_position, entries, batch_format)},
    }
    if item_size(item) > MAX_ITEM_BYTES:
        pointers = [entry._replace(state=None) for entry in entries]
        item[schema.EVENTS] = {
            "B": encode_batch(first_position, pointers, batch_format)
        }
    return item


def read_batch_item(
    item: Mapping[str, AttributeValueTypeDef], table_name: str
) -> tuple[int, list[BatchEntry]]:
    """Return a batch item's first position and events, or say it is corrupt.

    Raises :class:`CorruptNotificationBatchError` when an attribute is missing
    or of the wrong type, the events cannot be decoded, their checksum does
    not match (format 2), or their number does not fill the batch's positions.
    """
    last_position = int(item[schema.POSITION]["N"])  # the key: always there
    try:
        first_position = int(item[schema.FIRST_POSITION]["N"])
        entries = decode_batch(item[schema.EVENTS]["B"], first_position)
    except (KeyError, TypeError, ValueError) as error:
        reason = f"{type(error).__name__}: {error}"
        raise CorruptNotificationBatchError(
            table_name, last_position, reason
        ) from error
    if first_position + len(entries) - 1 != last_position:
        raise CorruptNotificationBatchError(
            table_name,
            last_position,
            f"it holds {len(entries)} events for positions {first_position} "
            f"to {last_position}",
        )
    return first_position, entries


def encode_batch(
    first_position: int,
    entries: Iterable[BatchEntry],
    batch_format: int = FORMAT,
    *,
    compress: bool | None = None,
) -> bytes:
    """Return the binary form of a batch starting at ``first_position``.

    ``batch_format``: 3 (the default) or 2. ``compress`` (format 3): None to
    compress when that makes the batch smaller, True or False to choose.
    """
    if batch_format == FORMAT:
        return _encode_columns(first_position, list(entries), compress)
    if batch_format != ROWS_FORMAT:
        raise ValueError(
            f"Notification batches are written in format {ROWS_FORMAT} or "
            f"{FORMAT}, not {batch_format!r}."
        )
    parts = [_U8.pack(ROWS_FORMAT)]
    for aggregate_id, version, topic, state in entries:
        id_bytes = aggregate_id.encode()
        topic_bytes = topic.encode()
        parts += (
            _U16.pack(len(id_bytes)),
            id_bytes,
            _I64.pack(version),
            _U16.pack(len(topic_bytes)),
            topic_bytes,
        )
        if state is None:
            parts.append(_U32.pack(NOT_INLINE))
        else:
            parts += (_U32.pack(len(state)), state)
    events = b"".join(parts)
    return events + _U32.pack(_checksum(first_position, events))


def decode_batch(blob: bytes, first_position: int) -> list[BatchEntry]:
    """Return the events of a batch from its binary form (format 1, 2 or 3).

    Raises ValueError, saying what is wrong, for bytes it cannot read or
    whose checksum does not match ``first_position`` and the events.
    """
    view = memoryview(blob)
    found = view[0] if view else None
    if found in (ROWS_FORMAT, FORMAT):
        end = len(view) - _CHECKSUM_BYTES
        if end < 1:
            raise ValueError(
                f"format {found} batch of {len(view)} bytes has no checksum"
            )
        (stored,) = _U32.unpack_from(view, end)
        computed = _checksum(first_position, view[:end])
        if stored != computed:
            raise ValueError(
                f"checksum mismatch: the batch's events or its first position "
                f"({first_position}) changed after it was written (stored CRC-32 "
                f"{stored:#010x}, computed {computed:#010x})"
            )
        if found == FORMAT:
            return _decode_columns(view[:end])
        return _decode_events(view[:end])
    if found == UNCHECKED_FORMAT:
        return _decode_events(view)
    raise ValueError(
        f"Notification batch has format {'nothing' if found is None else found}; "
        f"this ledger reads formats {UNCHECKED_FORMAT}, {ROWS_FORMAT} and {FORMAT}. "
        "Upgrade ledger to read it."
    )


def _encode_columns(
    first_position: int, entries: list[BatchEntry], compress: bool | None
) -> bytes:
    """Return a batch in format 3 (see the module's docstring)."""
    topics: dict[str, int] = {}
    ids: dict[str, int] = {}
    for entry in entries:
        topics.setdefault(entry.topic, len(topics))
        ids.setdefault(entry.aggregate_id, len(ids))
    if max(len(entries), len(topics), len(ids)) > _MAX_COUNT:
        raise ValueError(
            f"A batch holds at most {_MAX_COUNT} events, topics and ids; this "
            f"one has {len(entries)} events: write fewer events per batch."
        )
    n = len(entries)
    parts = [_U16.pack(n), _U16.pack(len(topics))]
    for topic in topics:
        topic_bytes = topic.encode()
        parts += (_U16.pack(len(topic_bytes)), topic_bytes)
    parts.append(_U16.pack(len(ids)))
    for aggregate_id in ids:
        parts += _id_bytes(aggregate_id)
    states = [entry.state for entry in entries]
    parts.append(
        struct.pack(
            f">{n}H{n}H{n}q{n}I",
            *[topics[entry.topic] for entry in entries],
            *[ids[entry.aggregate_id] for entry in entries],
            *[entry.version for entry in entries],
            *[NOT_INLINE if state is None else len(state) for state in states],
        )
    )
    parts += [state for state in states if state]
    body = b"".join(parts)
    flags = _FLAGS
    if compress is not False:
        packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS)
        packed = packer.compress(body) + packer.flush()
        if compress or len(packed) < len(body):
            body, flags = packed, _FLAGS | _COMPRESSED
    events = b"".join((_U8.pack(FORMAT), _GUARD, _U8.pack(flags), body))
    return events + _U32.pack(_checksum(first_position, events))


def _id_bytes(aggregate_id: str) -> tuple[bytes, ...]:
    """Return an id's stored form: its 16 bytes if a canonical UUID, else its text."""
    if len(aggregate_id) == _UUID_TEXT and (
        aggregate_id[8]
        == aggregate_id[13]
        == aggregate_id[18]
        == "-"
        == aggregate_id[23]
    ):
        digits = aggregate_id.replace("-", "")
        try:
            raw = bytes.fromhex(digits)
        except ValueError:
            raw = b""
        # fromhex passes over spaces and reads capitals: only the canonical
        # (lower case) text is stored as bytes, so it reads back the same.
        if len(raw) == _UUID_BYTES and raw.hex() == digits:
            return _U16.pack(_UUID_ID), raw
    id_bytes = aggregate_id.encode()
    if len(id_bytes) >= _UUID_ID:
        raise ValueError(
            f"An aggregate id of {len(id_bytes)} bytes is too long for a batch "
            f"(at most {_UUID_ID - 1}; DynamoDB keys take 2,048)."
        )
    return _U16.pack(len(id_bytes)), id_bytes


def _decode_columns(events: memoryview) -> list[BatchEntry]:
    """Return the events of a format 3 batch whose checksum matched."""
    if len(events) < _HEADER_BYTES or events[1:3] != _GUARD:
        raise ValueError("format 3 batch has no header")
    flags = events[3]
    if flags & ~_COMPRESSED != _FLAGS:
        raise ValueError(f"format 3 batch has unknown flags {flags:#04x}")
    body: bytes | memoryview = events[_HEADER_BYTES:]
    if flags & _COMPRESSED:
        unpacker = zlib.decompressobj(_WBITS)
        try:
            body = unpacker.decompress(body)
        except zlib.error as error:
            raise ValueError(f"compressed events cannot be read ({error})") from error
        if not unpacker.eof or unpacker.unused_data:
            raise ValueError("compressed events do not end where the batch ends")
    try:
        return _columns(memoryview(body))
    except (struct.error, IndexError) as error:
        raise ValueError(f"format 3 batch is cut short ({error})") from error


def _columns(body: memoryview) -> list[BatchEntry]:
    (n,) = _U16.unpack_from(body, 0)
    (count,) = _U16.unpack_from(body, 2)
    offset = 4
    topics: list[str] = []
    for _ in range(count):
        (length,) = _U16.unpack_from(body, offset)
        topics.append(str(_take(body, offset + 2, length), "utf-8"))
        offset += 2 + length
    (count,) = _U16.unpack_from(body, offset)
    offset += 2
    ids: list[str] = []
    for _ in range(count):
        (length,) = _U16.unpack_from(body, offset)
        offset += 2
        if length == _UUID_ID:
            digits = _take(body, offset, _UUID_BYTES).hex()
            # As str(uuid.UUID(bytes=...)), in a third of the time.
            ids.append(
                f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-"
                f"{digits[16:20]}-{digits[20:]}"
            )
            offset += _UUID_BYTES
        else:
            ids.append(str(_take(body, offset, length), "utf-8"))
            offset += length
    columns = struct.Struct(f">{n}H{n}H{n}q{n}I")
    values = columns.unpack_from(body, offset)
    offset += columns.size
    topic_of, id_of = values[:n], values[n : 2 * n]
    versions, lengths = values[2 * n : 3 * n], values[3 * n :]
    # The states' bounds are checked once, for all of them, so that each is
    # then one slice of one copy of the bytes (most of a batch read's work).
    inline = sum(length for length in lengths if length != NOT_INLINE)
    if offset + inline > len(body):
        raise ValueError(
            f"format 3 batch is cut short: its states take {inline} bytes from "
            f"offset {offset}; the events end at {len(body)}"
        )
    if offset + inline != len(body):
        raise ValueError(
            f"format 3 batch has {len(body) - offset - inline} bytes after its "
            "last event"
        )
    data = bytes(body[offset:])
    states: list[bytes | None] = []
    offset = 0
    for length in lengths:
        if length == NOT_INLINE:
            states.append(None)
        else:
            states.append(data[offset : offset + length])
            offset += length
    # tuple.__new__ makes each BatchEntry without the named tuple's own
    # __new__ (a Python function): half the cost, the same tuples.
    return list(
        map(
            tuple.__new__,
            repeat(BatchEntry, n),
            zip(
                map(ids.__getitem__, id_of),
                versions,
                map(topics.__getitem__, topic_of),
                states,
                strict=True,
            ),
        )
    )


def _checksum(first_position: int, events: bytes | memoryview) -> int:
    return zlib.crc32(events, zlib.crc32(_I64.pack(first_position)))


def _decode_events(events: memoryview) -> list[BatchEntry]:
    """Return the events after the format byte; each must fit in ``events``."""
    entries: list[BatchEntry] = []
    offset = 1
    end = len(events)
    try:
        while offset < end:
            (length,) = _U16.unpack_from(events, offset)
            offset += 2
            aggregate_id = str(_take(events, offset, length), "utf-8")
            offset += length
            (version,) = _I64.unpack_from(events, offset)
            offset += 8
            (length,) = _U16.unpack_from(events, offset)
            offset += 2
            topic = str(_take(events, offset, length), "utf-8")
            offset += length
            (length,) = _U32.unpack_from(events, offset)
            offset += 4
            state: bytes | None = None
            if length != NOT_INLINE:
                state = bytes(_take(events, offset, length))
                offset += length
            entries.append(BatchEntry(aggregate_id, version, topic, state))
    except struct.error as error:
        raise ValueError(f"event {len(entries) + 1} is cut short ({error})") from error
    return entries


def _take(events: memoryview, offset: int, length: int) -> memoryview:
    """Return ``length`` bytes from ``offset``, or say the events end before."""
    if offset + length > len(events):
        raise struct.error(
            f"needs {length} bytes at offset {offset}; the events end at {len(events)}"
        )
    return events[offset : offset + length]
