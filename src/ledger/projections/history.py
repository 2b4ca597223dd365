"""Where a rebuild reads history: the application sequence, or the events table.

A history is read in *pages*; each page carries the events to apply and the
checkpoint to store once they are applied and flushed, so a crashed rebuild
resumes after the last page it flushed. Two kinds, chosen by the
application's ordering (``DYNAMODB_ORDERING``):

``SequenceHistory`` (``sequence``)
    The application sequence in position order: each page one batch of an
    :class:`~ledger.feeds.IndexSource` (one ``select_notifications`` call),
    the next page read while the current one is applied, read until a pass
    finds nothing new. Checkpoint: the last position applied.

``ScanHistory`` (``stream``, or any application)
    The events table itself, read by a parallel Scan (``segments`` segments,
    one reader thread each, strongly consistent). DynamoDB keeps all items of
    one partition key (one aggregate) in one segment, in sort-key (version)
    order, so each aggregate's events arrive in version order; aggregates
    interleave in any order, which projectors accept (the stream feed
    assumes it too). Checkpoint: each segment's next start key.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from ledger.dynamodb import schema as store_schema
from ledger.projections.deadletters import error_summary

DEFAULT_PAGE_SIZE = 1000
"""Notifications read per request from the application sequence."""
DEFAULT_SEGMENTS = 4
"""Parallel Scan segments (reader threads) over the events table."""
DEFAULT_SCAN_LIMIT = 1000
"""Events per Scan request: a page in memory stays about a megabyte parsed."""

Checkpoint = dict[str, Any]
"""A JSON-able position in a history; opaque outside the history that made it."""


@dataclass(frozen=True)
class Undecodable:
    """An event that could not be decoded (a topic no code knows, bad state).

    A rebuild parks it as a dead letter, as the stream feed does: its
    aggregate waits, the others go on, and a redrive after the fix applies it.
    """

    aggregate_id: str
    version: int
    topic: str
    error: str
    """What went wrong (the error's type and place, never its message)."""


@dataclass(frozen=True)
class Page:
    """Events to apply, in order, and where the history stands after them."""

    events: list[tuple[Any, int | None]]
    """(domain event or :class:`Undecodable`, position in the application
    sequence or None)."""
    checkpoint: Checkpoint
    head: int | None = None
    """The last position of the application sequence, if the history has one."""


class History(Protocol):
    """Pages of an application's events, from a checkpoint on."""

    kind: str

    def pages(self, checkpoint: Checkpoint | None) -> Iterator[Page]:
        """Yield the pages after ``checkpoint`` (None: from the beginning)."""
        ...  # pragma: no cover


class SequenceHistory:
    """The application sequence, page by page, one page read ahead.

    Its pages are the batches of an :class:`~ledger.feeds.IndexSource`. A
    source goes to the head as of the call, so this reads again from where
    it got to until a read finds nothing new: what was committed while the
    history was read is read too, and the catch-up after the switch has
    only what arrived after the last read.
    """

    kind = "sequence"

    def __init__(self, application: Any, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.application = application
        self.page_size = page_size

    def pages(self, checkpoint: Checkpoint | None) -> Iterator[Page]:
        """Yield pages of notifications after the checkpoint's position."""
        # ledger.feeds decodes with this module's ``decode``: imported here,
        # not at the top, so either module can be imported first.
        from ledger.feeds import IndexSource  # noqa: PLC0415

        source = IndexSource(self.application, page_size=self.page_size)
        position = 0 if checkpoint is None else int(checkpoint["position"])
        while True:
            start = position
            for batch in source.batches(position):
                position = batch.checkpoint
                yield Page(
                    [(item.event, item.position) for item in batch.items],
                    {"position": position},
                    batch.head,
                )
            if position == start:
                return


class ScanHistory:
    """The events table, by a parallel Scan, one reader thread per segment."""

    kind = "scan"

    def __init__(
        self,
        application: Any,
        segments: int = DEFAULT_SEGMENTS,
        limit: int | None = DEFAULT_SCAN_LIMIT,
    ) -> None:
        self.application = application
        self.segments = segments
        self.limit = limit
        """Items per Scan request (None: as many as fit in DynamoDB's 1 MB)."""

    def pages(self, checkpoint: Checkpoint | None) -> Iterator[Page]:
        """Yield Scan pages of every segment as they arrive.

        A page's checkpoint holds every segment's start key as of the pages
        yielded so far (a segment's pages are yielded in order), so storing
        it after applying the page loses and repeats nothing.
        """
        if checkpoint is None:
            segments = self.segments
            starts: dict[int, Any] = dict.fromkeys(range(segments))
        else:
            segments = int(checkpoint["segments"])
            starts = {
                int(segment): json.loads(key) if key else None
                for segment, key in checkpoint["starts"].items()
            }
        done = set(range(segments)) - set(starts)
        pending = [s for s in range(segments) if s not in done]
        pages: queue.Queue[tuple[int, Any, list[dict[str, Any]]] | BaseException] = (
            # One page waiting per reader: memory stays a few pages.
            queue.Queue(maxsize=max(1, len(pending)))
        )
        stop = threading.Event()
        readers = [
            threading.Thread(
                target=self._read_segment,
                args=(segment, segments, starts[segment], pages, stop),
                daemon=True,
            )
            for segment in pending
        ]
        for reader in readers:
            reader.start()
        to_event = self._decoder()
        head = self._approximate_count()
        try:
            open_segments = len(readers)
            while open_segments:
                got = pages.get()
                if isinstance(got, BaseException):
                    raise got
                segment, next_key, items = got
                if next_key is None:
                    starts.pop(segment)
                    open_segments -= 1
                else:
                    starts[segment] = next_key
                yield Page(
                    [(to_event(item), _position(item)) for item in items],
                    {
                        "segments": segments,
                        "starts": {str(s): json.dumps(k) for s, k in starts.items()},
                    },
                    head,
                )
        finally:
            stop.set()
            for reader in readers:
                while reader.is_alive():
                    # Unblock a reader waiting on a full queue.
                    with contextlib.suppress(queue.Empty):
                        pages.get_nowait()
                    reader.join(timeout=0.05)

    def _approximate_count(self) -> int | None:
        """Return the events table's item count as last estimated (for progress)."""
        recorder = self.application.recorder
        table = recorder.connection.call(
            "describe_table", TableName=recorder.events_table_name
        )["Table"]
        count = table.get("ItemCount")
        return None if count is None else int(count)

    def _read_segment(
        self,
        segment: int,
        segments: int,
        start: Any,
        pages: queue.Queue[tuple[int, Any, list[dict[str, Any]]] | BaseException],
        stop: threading.Event,
    ) -> None:
        connection = self.application.recorder.connection
        params: dict[str, Any] = {
            "TableName": self.application.recorder.events_table_name,
            "Segment": segment,
            "TotalSegments": segments,
            "ConsistentRead": True,
        }
        if start is not None:
            params["ExclusiveStartKey"] = start
        if self.limit is not None:
            params["Limit"] = self.limit
        try:
            while not stop.is_set():
                response = connection.call("scan", **params)
                next_key = response.get("LastEvaluatedKey")
                pages.put((segment, next_key, response["Items"]))
                if next_key is None:
                    return
                params["ExclusiveStartKey"] = next_key
        except BaseException as error:  # noqa: BLE001 - handed to the applying thread
            pages.put(error)

    def _decoder(self) -> Callable[[dict[str, Any]], Any]:
        recorder = self.application.recorder
        mapper = self.application.mapper
        uuid_ids = getattr(recorder, "originator_id_type", "uuid") == "uuid"

        def to_event(item: dict[str, Any]) -> Any:
            aggregate_id = item[store_schema.AGGREGATE_ID]["S"]
            return decode(
                mapper,
                StoredEvent(
                    originator_id=UUID(aggregate_id) if uuid_ids else aggregate_id,
                    originator_version=int(item[store_schema.VERSION]["N"]),
                    topic=item[store_schema.TOPIC]["S"],
                    state=bytes(item[store_schema.STATE]["B"]),
                ),
            )

        return to_event


def decode(mapper: Any, stored: StoredEvent) -> Any:
    """Return the domain event, or :class:`Undecodable` if it cannot be made.

    Feeds pass an :class:`Undecodable` to the projector, which parks it.
    """
    try:
        return mapper.to_domain_event(stored)
    except Exception as error:  # noqa: BLE001 - any decoding failure is parked
        return Undecodable(
            str(stored.originator_id),
            stored.originator_version,
            stored.topic,
            error_summary(error, " while decoding"),
        )


def _position(item: dict[str, Any]) -> int | None:
    position = item.get(store_schema.POSITION)
    return None if position is None else int(position["N"])


def history_of(application: Any, *, page_size: int = DEFAULT_PAGE_SIZE) -> History:
    """Return the history a rebuild of ``application`` reads.

    The application sequence when the application keeps one (``sequence``
    ordering), else the events table.
    """
    if getattr(application.recorder, "ordering", "sequence") == "stream":
        return ScanHistory(application)
    return SequenceHistory(application, page_size)
