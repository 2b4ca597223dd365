"""Moving a notifications table from pages of 100,000 positions onto pages of 1,000.

A table first written before page sizes were recorded files each batch
under ``page = last position // 100,000`` (``schema.LEGACY_PAGE_SIZE``), so
one partition key takes 100,000 positions of writes and reads. :func:`repage`
moves it onto ``schema.PAGE_SIZE`` pages, in place, without changing any
position, while writers and readers go on:

1. **Copy.** Every batch item is put again under its key on the new pages
   (only ``page`` differs: its checksum covers its first position and
   events, not its key). Batches keep their old keys too. Which positions
   are copied is kept on a progress item (``SEQUENCE_PAGE``,
   ``schema.REPAGE_POSITION``), written after the copies it covers, so a
   killed run resumes there; copying an item twice writes the same item.
2. **Switch.** The sequence item's ``POSITIONS_PER_PAGE`` is set, on
   condition that its last position is still the one copied to and it has
   no size (or the old one). A writer that appended meanwhile fails the
   condition: its batches are copied and the switch tried again.

Why every reader is right at every moment: before the switch, every reader
and writer takes the old size from the sequence item, and the old keys hold
every batch. The switch commits only when every committed batch has been
copied, and from then on a writer's save (the ``sequence`` ordering's, or
the indexer's round in the ``indexed`` one) commits only with batches filed
by the new size: its update of the sequence item is conditional on the size
it filed by, so a writer that still holds the old one fails, re-reads the
size, and files again. A reader reads the sequence item before any position
past what it saw committed, learning the size with the last position; one
still holding the old size reads only positions committed before the
switch, which the old keys still hold. The two layouts never meet in one
Query: a reader asks a page for positions within its own size's reach, and
where a page number is a key of both layouts (page 1 of the old is
positions 100,000 to 199,999, of the new 1,000 to 1,999) those position
ranges do not overlap, except on page 0, whose items below 1,000 are one
and the same item in both.

3. **Removing the old keys** (:func:`remove_old_pages`, optional, after the
   switch) deletes each batch's item under its old key, halving the table's
   storage. Only when every process that read the table before the switch
   has been restarted, or has read its head since: a reader still holding
   the old size would find its next batch missing.

Costs: a Query per 1,000 or so batch items of each old page (read units for
the table's bytes), a ``BatchWriteItem`` per 25 items (write units for the
table's bytes again), a progress write per 250 items, and one conditional
``UpdateItem`` of the sequence item (plus one per writer that appended in
between). Writers need not stop; while it runs, the table holds up to twice
its bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
)

from ledger.dynamodb import schema
from ledger.dynamodb.client import AmbiguousWriteError
from ledger.dynamodb.recorders import _backoff, logger
from ledger.dynamodb.sequence_recorders import DynamoDBApplicationRecorder

if TYPE_CHECKING:  # the stubs are a development dependency only
    from ledger.dynamodb.recorders import Item

__all__ = ["Repaged", "remove_old_pages", "repage"]

_SEQUENCE_KEY: Final[Item] = {
    schema.PAGE: {"N": str(schema.SEQUENCE_PAGE)},
    schema.POSITION: {"N": "0"},
}
_PROGRESS_KEY: Final[Item] = {
    schema.PAGE: {"N": str(schema.SEQUENCE_PAGE)},
    schema.POSITION: {"N": str(schema.REPAGE_POSITION)},
}
_WRITE_CHUNK: Final = 25  # BatchWriteItem's most requests
_PROGRESS_EVERY: Final = 10  # chunks written between two progress writes
_SWITCH_ATTEMPTS: Final = 50


@dataclass(frozen=True)
class Repaged:
    """What a move onto smaller pages did."""

    copied: int
    """Batch items this run put under their new keys."""
    last_position: int
    """The sequence's last position when the table was switched."""
    page_size: int
    """The table's page size now."""
    already: bool = False
    """Whether the table had that page size before this run (nothing to do)."""


def repage(
    recorder: DynamoDBApplicationRecorder,
    *,
    page_size: int = schema.PAGE_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> Repaged:
    """Move the recorder's notifications table onto pages of ``page_size``.

    For tables of ``schema.LEGACY_PAGE_SIZE`` pages (no size on their
    sequence item), of either ordering that has one (``sequence``,
    ``indexed``); see the module's docstring for how, what it costs, and why
    writers and readers need not stop. Resumes a run that was killed; a
    table moved already is left as it is. ``progress`` is called with the
    position copied through and the last position, now and then.
    """
    table = recorder.notifications_table_name
    copied = 0
    for attempt in range(_SWITCH_ATTEMPTS):
        sequence = _get(recorder, _SEQUENCE_KEY)
        if sequence is None:
            # Nothing written yet: the first write records schema.PAGE_SIZE.
            return Repaged(0, 0, schema.PAGE_SIZE, already=True)
        last = int(sequence[schema.LAST_POSITION]["N"])
        size = _size(sequence)
        if size == page_size:
            _delete(recorder, _PROGRESS_KEY)  # a run killed after its switch
            return Repaged(copied, last, page_size, already=attempt == 0)
        if size != schema.LEGACY_PAGE_SIZE:
            raise DataError(
                f"The notifications table {table!r} has pages of {size} "
                f"positions, not {schema.LEGACY_PAGE_SIZE}: only tables written "
                "before page sizes were recorded are moved. Nothing was changed."
            )
        through = _progress(recorder, page_size)
        copied += _copy(recorder, through, last, page_size, progress)
        if _switch(recorder, last, page_size):
            _delete(recorder, _PROGRESS_KEY)
            logger.info(
                "moved onto smaller pages",
                extra={"table": table, "page_size": page_size, "last": last},
            )
            return Repaged(copied, last, page_size)
        _backoff(attempt)
    raise OperationalError(
        f"Writers appended to {table!r} each time before its page size could "
        f"be switched ({_SWITCH_ATTEMPTS} times): every batch copied so far "
        "stays copied. Run it again, at a quieter time."
    )


def remove_old_pages(
    recorder: DynamoDBApplicationRecorder,
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the old-page items of a moved table; return how many were deleted.

    Only after :func:`repage` switched the table, and once every process
    that read it before has been restarted or has read its head since (a
    reader still holding the old size would find batches missing). Costs a
    Query of each old page and a ``BatchWriteItem`` per 25 deletes; rerun
    freely.
    """
    table = recorder.notifications_table_name
    sequence = _get(recorder, _SEQUENCE_KEY)
    if sequence is None:
        return 0
    size = _size(sequence)
    if size == schema.LEGACY_PAGE_SIZE:
        raise ProgrammingError(
            f"The notifications table {table!r} still has pages of "
            f"{schema.LEGACY_PAGE_SIZE} positions: move it first "
            "(`ledger index repage`); the old keys are all its readers have."
        )
    last = int(sequence[schema.LAST_POSITION]["N"])
    removed = 0
    keys: list[Item] = []
    for item in _old_items(recorder, 1, last, size):
        keys.append(
            {schema.PAGE: item[schema.PAGE], schema.POSITION: item[schema.POSITION]}
        )
        if len(keys) == _WRITE_CHUNK:
            _write_chunk(recorder, [{"DeleteRequest": {"Key": k}} for k in keys])
            removed += len(keys)
            keys = []
            if progress is not None:
                progress(removed)
    if keys:
        _write_chunk(recorder, [{"DeleteRequest": {"Key": k}} for k in keys])
        removed += len(keys)
    return removed


# Steps -----------------------------------------------------------------------------


def _copy(
    recorder: DynamoDBApplicationRecorder,
    through: int,
    last: int,
    page_size: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Copy the batches ending after ``through`` up to ``last``; return how many.

    The progress item is moved on only after the copies it covers are written.
    """
    copied = 0
    chunk: list[Item] = []
    chunks = 0
    high = through
    for item in _old_items(recorder, through + 1, last, page_size):
        position = int(item[schema.POSITION]["N"])
        chunk.append(
            {**item, schema.PAGE: {"N": str(schema.page_of(position, page_size))}}
        )
        high = position
        if len(chunk) == _WRITE_CHUNK:
            _write_chunk(recorder, [{"PutRequest": {"Item": i}} for i in chunk])
            copied += len(chunk)
            chunk = []
            chunks += 1
            if chunks % _PROGRESS_EVERY == 0:
                _save_progress(recorder, high, page_size)
                if progress is not None:
                    progress(high, last)
    if chunk:
        _write_chunk(recorder, [{"PutRequest": {"Item": i}} for i in chunk])
        copied += len(chunk)
    if last > through:
        # Positions past the last batch copied but up to ``last`` are in none:
        # ``last`` ends a batch, so every batch up to it was read.
        _save_progress(recorder, last, page_size)
        if progress is not None:
            progress(last, last)
    return copied


def _old_items(
    recorder: DynamoDBApplicationRecorder, low: int, high: int, page_size: int
) -> Iterator[Item]:
    """Yield the old-page items whose key on pages of ``page_size`` differs.

    Those ending from ``low`` to ``high``, in position order. Each old page
    is asked only for its own positions, so no item under a new key (page 1
    of the new pages is positions 1,000 to 1,999) comes back.
    """
    legacy = schema.LEGACY_PAGE_SIZE
    for page in range(schema.page_of(low, legacy), schema.page_of(high, legacy) + 1):
        first = max(low, page * legacy)
        final = min(high, (page + 1) * legacy - 1)
        if first > final:
            continue
        for item in recorder.connection.items(
            "query",
            TableName=recorder.notifications_table_name,
            KeyConditionExpression="#p = :p AND #pos BETWEEN :low AND :high",
            ExpressionAttributeNames={"#p": schema.PAGE, "#pos": schema.POSITION},
            ExpressionAttributeValues={
                ":p": {"N": str(page)},
                ":low": {"N": str(first)},
                ":high": {"N": str(final)},
            },
            ConsistentRead=True,
        ):
            position = int(item[schema.POSITION]["N"])
            if schema.page_of(position, page_size) != page:
                yield item


def _switch(recorder: DynamoDBApplicationRecorder, last: int, page_size: int) -> bool:
    """Record the new page size if the sequence still ends at ``last``.

    False: a writer appended meanwhile (or the answer was lost: the next
    attempt re-reads the sequence item and sees which).
    """
    try:
        recorder.connection.call(
            "update_item",
            TableName=recorder.notifications_table_name,
            Key=_SEQUENCE_KEY,
            UpdateExpression="SET #size = :size",
            ConditionExpression=(
                "#last = :last AND (attribute_not_exists(#size) OR #size = :legacy)"
            ),
            ExpressionAttributeNames={
                "#last": schema.LAST_POSITION,
                "#size": schema.POSITIONS_PER_PAGE,
            },
            ExpressionAttributeValues={
                ":last": {"N": str(last)},
                ":size": {"N": str(page_size)},
                ":legacy": {"N": str(schema.LEGACY_PAGE_SIZE)},
            },
        )
    except (IntegrityError, AmbiguousWriteError):
        return False
    return True


# Items -------------------------------------------------------------------------------


def _get(recorder: DynamoDBApplicationRecorder, key: Item) -> Item | None:
    item: Item | None = recorder.connection.call(
        "get_item",
        TableName=recorder.notifications_table_name,
        Key=key,
        ConsistentRead=True,
    ).get("Item")
    return item


def _delete(recorder: DynamoDBApplicationRecorder, key: Item) -> None:
    recorder.connection.call(
        "delete_item", TableName=recorder.notifications_table_name, Key=key
    )


def _size(sequence: Item) -> int:
    value = sequence.get(schema.POSITIONS_PER_PAGE)
    return schema.LEGACY_PAGE_SIZE if value is None else int(value["N"])


def _progress(recorder: DynamoDBApplicationRecorder, page_size: int) -> int:
    """Return the position copied through by earlier runs (0: none)."""
    item = _get(recorder, _PROGRESS_KEY)
    if item is None:
        return 0
    if _size(item) != page_size:
        raise ProgrammingError(
            f"A move of {recorder.notifications_table_name!r} onto pages of "
            f"{_size(item)} positions is under way: finish it with that size."
        )
    return int(item[schema.REPAGED_THROUGH]["N"])


def _save_progress(
    recorder: DynamoDBApplicationRecorder, through: int, page_size: int
) -> None:
    recorder.connection.call(
        "put_item",
        TableName=recorder.notifications_table_name,
        Item={
            **_PROGRESS_KEY,
            schema.REPAGED_THROUGH: {"N": str(through)},
            schema.POSITIONS_PER_PAGE: {"N": str(page_size)},
        },
    )


def _write_chunk(recorder: DynamoDBApplicationRecorder, requests: list[Any]) -> None:
    """Write up to 25 puts or deletes, again for any DynamoDB left unprocessed."""
    table = recorder.notifications_table_name
    pending: dict[str, Any] = {table: requests}
    attempt = 0
    while pending:
        response = recorder.connection.call("batch_write_item", RequestItems=pending)
        pending = response.get("UnprocessedItems") or {}
        if pending:
            attempt += 1
            _backoff(attempt)
