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

Layout of the ``events`` attribute (big-endian), format 2, written now::

    u8  format (2)
    then per event, in position order:
    u16 length + UTF-8 aggregate id
    i64 version
    u16 length + UTF-8 topic
    u32 length + state bytes, or u32 0xFFFFFFFF: state not inline (a pointer;
        read it from the events table)
    u32 CRC-32 of the batch's first position (i64) followed by every byte above

The checksum covers all a reader takes from the item: the first position
(stored in its own attribute), the number of events, and each event's id,
version, topic and state or pointer mark. The last position (the item's key)
is checked against the first position and the number of events.

Format 1, written before, is the same without the checksum. It is still read,
but only damage to its framing is detected in it (a truncated or overlong
event, bytes that are not UTF-8, a number of events that does not match its
positions): a changed byte inside a state, id or version reads as valid.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple, TypeAlias

from eventsourcing.persistence import DataError

from ledger.dynamodb import schema
from ledger.dynamodb.limits import MAX_ITEM_BYTES, item_size

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

    Item: TypeAlias = dict[str, AttributeValueTypeDef]

FORMAT: Final = 2
"""The layout version written now: the events, then their checksum."""
UNCHECKED_FORMAT: Final = 1
"""The layout written before the checksum existed; still read."""
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
    first_position: int, entries: Sequence[BatchEntry], page_size: int
) -> Item:
    """Return the notifications-table item of events from ``first_position`` on.

    ``entries`` carry their states; ``page_size`` is the table's
    (``schema.POSITIONS_PER_PAGE``). When the item with the states would pass
    DynamoDB's item limit, it holds pointers instead (readers fetch those
    states from the events table), so DynamoDB's own limits stay the only ones.
    """
    last_position = first_position + len(entries) - 1
    item: Item = {
        schema.PAGE: {"N": str(schema.page_of(last_position, page_size))},
        schema.POSITION: {"N": str(last_position)},
        schema.FIRST_POSITION: {"N": str(first_position)},
        schema.EVENTS: {"B": encode_batch(first_position, entries)},
    }
    if item_size(item) > MAX_ITEM_BYTES:
        pointers = [entry._replace(state=None) for entry in entries]
        item[schema.EVENTS] = {"B": encode_batch(first_position, pointers)}
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


def encode_batch(first_position: int, entries: Iterable[BatchEntry]) -> bytes:
    """Return the binary form (format 2) of a batch starting at ``first_position``."""
    parts = [_U8.pack(FORMAT)]
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
    """Return the events of a batch from its binary form (format 1 or 2).

    Raises ValueError, saying what is wrong, for bytes it cannot read or
    whose checksum does not match ``first_position`` and the events.
    """
    view = memoryview(blob)
    found = view[0] if view else None
    if found == FORMAT:
        end = len(view) - _CHECKSUM_BYTES
        if end < 1:
            raise ValueError(f"format 2 batch of {len(view)} bytes has no checksum")
        (stored,) = _U32.unpack_from(view, end)
        computed = _checksum(first_position, view[:end])
        if stored != computed:
            raise ValueError(
                f"checksum mismatch: the batch's events or its first position "
                f"({first_position}) changed after it was written (stored CRC-32 "
                f"{stored:#010x}, computed {computed:#010x})"
            )
        return _decode_events(view[:end])
    if found == UNCHECKED_FORMAT:
        return _decode_events(view)
    raise ValueError(
        f"Notification batch has format {'nothing' if found is None else found}; "
        f"this ledger reads formats {UNCHECKED_FORMAT} and {FORMAT}. Upgrade "
        "ledger to read it."
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
