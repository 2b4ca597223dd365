"""What the indexer's stream rounds and its re-index share.

A record as the indexer reads it (:class:`_Record`, from a stream record or
an events table item), what a round read (:class:`_Round`), what a round
did (:class:`IndexRound`), the refusal of events out of version order
(:class:`IndexOrderError`), and the batch items of the sequence that both
append in one transaction. :mod:`ledger.indexer` (the rounds) and
:mod:`ledger.reindexing` (the re-index from the events table) import it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from eventsourcing.persistence import DataError

from ledger.dynamodb import schema
from ledger.dynamodb.batches import FORMAT, BatchEntry, batch_item
from ledger.dynamodb.limits import (
    MAX_TRANSACTION_ACTIONS,
    MAX_TRANSACTION_BYTES,
    item_size,
)
from ledger.projections.streams import INSERT

if TYPE_CHECKING:  # the stubs are a development dependency only
    from ledger.dynamodb.recorders import Item

logger = logging.getLogger("ledger.indexer")
"""Structured records (``extra=``): positions, counts, shard ids; never state."""

BATCH_EVENTS: Final = MAX_TRANSACTION_ACTIONS - 2
"""Events per batch item: as in ``sequence`` ordering, so its readers' reach holds."""
_MAX_BATCHES: Final = MAX_TRANSACTION_ACTIONS - 2  # plus the head and checkpoints
_BYTES_MARGIN: Final = 64 * 1024  # for the head and checkpoints items

_Encoded = tuple[tuple[int, int, int], list[BatchEntry], list["Item"]]
"""Batch items encoded: (head, page size, batch format), events, items."""


class IndexOrderError(DataError):
    """An aggregate's events reached the indexer out of version order."""


@dataclass(eq=False, slots=True)
class _Record:
    """One stream record as the indexer needs it (never changed once made).

    Compared and hashed by identity: a round keeps each record it read once
    (redeliveries are dropped by sequence number), and sets and maps of
    records (what a round consumed, where each sits in its shard) then hash
    no event state. Not a frozen dataclass: its ``__init__`` would set each
    field through ``object.__setattr__``, which made one of every record
    read cost about four times as much.
    """

    shard_id: str
    number: int
    text: str  # the sequence number as DynamoDB gave it (zero-padded)
    entry: BatchEntry | None  # None: no new event (passed over)
    save: tuple[str, int, int] | None  # (save id, index, size) of a multi-event save
    created: float | None = None  # ApproximateCreationDateTime (epoch seconds)


@dataclass
class _Round:
    """What a round read: the head, the checkpoints and their revision."""

    head: int
    checkpoints: dict[str, str]
    revision: int | None
    read: dict[str, list[_Record]] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    """Closed shards read to their end this round: their last sequence number."""
    scan: dict[str, Item | None] | None = None
    """While re-indexing: per Scan segment, its LastEvaluatedKey (None: start)."""
    segments: int = 1
    held: list[Item] = field(default_factory=list)
    reindexed_at: float | None = None
    reindex_started: float | None = None
    """When the re-index's last pass began, until a stream commit leaves no
    listed shard without a checkpoint."""
    reindex_pass: int = 0
    """Which pass that is (0: none, or every listed shard checkpointed since)."""
    reindex_caught_up: float | None = None
    """When a round last began that found every listed shard without a
    checkpoint empty to its tip (None: none has since the last pass began,
    or no commit yet)."""
    ended_shards: set[str] | None = None
    """Shards recorded as read to their end (None: none recorded yet)."""


@dataclass(frozen=True)
class IndexRound:
    """What one round of the indexer did, as its metrics report it."""

    appended: int
    """Events appended to the sequence."""
    lag_records: int
    """Stream records after the checkpoints when the round began, as far as
    it read (at most ``batch_size`` per shard: a lower bound of the lag)."""
    oldest_age_ms: float | None
    """Age of the oldest record read, unindexed when the round began (None: none)."""
    reindexing: bool = False
    """Whether the round was one of a re-index from the events table (which
    reads no stream: its lag is reported as 0 and its age as None)."""


def _record(shard_id: str, raw: Mapping[str, Any]) -> _Record:
    # Run for every record read: the sequence number is read here, not by
    # calling ``sequence_number``, and each attribute is looked up once.
    stream_fields = raw["dynamodb"]
    text: str = stream_fields["SequenceNumber"]
    number = int(text)
    if raw.get("eventName") != INSERT:
        return _Record(shard_id, number, text, None, None)
    image = stream_fields.get("NewImage", {})
    try:
        entry = BatchEntry(
            image[_AGGREGATE_ID]["S"],
            int(image[_VERSION]["N"]),
            image[_TOPIC]["S"],
            bytes(image[_STATE]["B"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"Stream record {number} of shard {shard_id} is not an event of "
            f"ledger's events table ({type(error).__name__}: {error}). Is the "
            "indexer reading the right table's stream (NEW_IMAGE view)?"
        ) from error
    save = None
    save_id = image.get(_SAVE_ID)
    if save_id is not None:
        save = (
            save_id["S"],
            int(image[schema.SAVE_INDEX]["N"]),
            int(image[schema.SAVE_SIZE]["N"]),
        )
    created = stream_fields.get("ApproximateCreationDateTime")
    return _Record(
        shard_id,
        number,
        text,
        entry,
        save,
        None if created is None else created.timestamp(),
    )


_AGGREGATE_ID: Final = schema.AGGREGATE_ID
_VERSION: Final = schema.VERSION
_TOPIC: Final = schema.TOPIC
_STATE: Final = schema.STATE
_SAVE_ID: Final = schema.SAVE_ID


def _aggregate(record: _Record) -> str:
    return "" if record.entry is None else record.entry.aggregate_id


def _version(record: _Record) -> int:
    return 0 if record.entry is None else record.entry.version


def _batch_items(
    head: int, events: list[BatchEntry], page_size: int, batch_format: int = FORMAT
) -> list[Item]:
    return [
        batch_item(
            head + 1 + offset,
            events[offset : offset + BATCH_EVENTS],
            page_size,
            batch_format,
        )
        for offset in range(0, len(events), BATCH_EVENTS)
    ]


def _commit_items(
    head: int,
    events: list[BatchEntry],
    page_size: int,
    batch_format: int,
    max_batches: int = _MAX_BATCHES,
) -> list[Item] | None:
    """Return the batch items of ``events`` after ``head`` if they fit one commit.

    None if they do not. The items are what a round that fits writes, so
    they are encoded (and compressed) once.
    """
    if len(events) > max_batches * BATCH_EVENTS:
        return None
    items = _batch_items(head, events, page_size, batch_format)
    if sum(item_size(item) for item in items) > MAX_TRANSACTION_BYTES - _BYTES_MARGIN:
        return None
    return items
