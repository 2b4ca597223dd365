"""The binary encoding of a save's events inside its notification batch item.

A batch item holds all the events of one save as ONE binary attribute rather
than a DynamoDB list of maps: botocore parses nested attribute values one
shape at a time, which made reading the application sequence about six times
slower than scanning the events table; one binary value is parsed at once.

Layout (big-endian), format 1::

    u8  format (1)
    then per event, in position order:
    u16 length + UTF-8 aggregate id
    i64 version
    u16 length + UTF-8 topic
    u32 length + state bytes, or u32 0xFFFFFFFF: state not inline (a pointer;
        read it from the events table)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final, NamedTuple

from eventsourcing.persistence import DataError

FORMAT: Final = 1
"""The layout version written now; readers reject formats they do not know."""
NOT_INLINE: Final = 0xFFFFFFFF
"""State length marking an event whose state is kept only in the events table."""

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_I64 = struct.Struct(">q")
_U32 = struct.Struct(">I")


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


def encode_batch(entries: Iterable[BatchEntry]) -> bytes:
    """Return the binary form of a batch's events."""
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
    return b"".join(parts)


def decode_batch(blob: bytes) -> list[BatchEntry]:
    """Return the events of a batch from its binary form."""
    view = memoryview(blob)
    if not view or view[0] != FORMAT:
        found = view[0] if view else "nothing"
        raise ValueError(
            f"Notification batch has format {found}; this ledger reads format "
            f"{FORMAT}. Upgrade ledger to read it."
        )
    entries: list[BatchEntry] = []
    offset = 1
    end = len(view)
    while offset < end:
        (length,) = _U16.unpack_from(view, offset)
        offset += 2
        aggregate_id = str(view[offset : offset + length], "utf-8")
        offset += length
        (version,) = _I64.unpack_from(view, offset)
        offset += 8
        (length,) = _U16.unpack_from(view, offset)
        offset += 2
        topic = str(view[offset : offset + length], "utf-8")
        offset += length
        (length,) = _U32.unpack_from(view, offset)
        offset += 4
        state: bytes | None = None
        if length != NOT_INLINE:
            state = bytes(view[offset : offset + length])
            offset += length
        entries.append(BatchEntry(aggregate_id, version, topic, state))
    return entries
