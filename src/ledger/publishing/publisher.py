"""The publisher: integration events from the events table's stream to EventBridge.

(Over 400 lines as one concept: reading, translating, batching, retrying,
dead-lettering and checkpointing are one delivery loop whose at-least-once
guarantee depends on their order.)

The events table's DynamoDB stream is the outbox: a save writes only its
events (no second write to a queue that could fail apart from them), and
the publisher reads them from the stream, translates the chosen ones into
integration events (:class:`~ledger.publishing.events.Publication`) and
sends them with ``PutEvents``. One consumer class does it on either source
(:class:`PublisherConsumer`, fed :class:`~ledger.feeds.Batch`es): on the
stream in Lambda (:func:`lambda_handler`, an event source mapping on the
stream reporting ``batchItemFailures``) or locally (a
:class:`~ledger.feeds.StreamPoller` fed with a :class:`Publisher`, which
keeps shard checkpoints in its table: :class:`ShardItems`). In ``indexed``
ordering it follows the application sequence instead, leaving the stream
to the indexer: run by a :class:`~ledger.feeds.Runner`
(:meth:`Publisher.runner`, :meth:`Publisher.follow_index`), it keeps its
position in a cursor in its table (:class:`IndexCursor`); that is how
``deploy/template.yaml`` runs it.

Delivery is **at least once**:

* entries go in ``PutEvents`` requests of at most 10 entries and 256 KB;
  entries the response reports failed (``FailedEntryCount``) are sent again,
  alone, after each of ``retry_delays``; an entry refused for good (a
  malformed detail, an entry over 256 KB) or still failing after the last
  retry is stored as a dead letter (:mod:`ledger.publishing.deadletters`),
  never dropped;
* a stream record is done when each of its entries was accepted or
  dead-lettered; only then does the position move past it (the poller's
  checkpoint, Lambda's, since the record is not reported failed, or the
  index cursor, which the runner saves after the batch's effects);
* when a request fails as a whole (EventBridge unavailable after botocore's
  retries, the bus missing, access denied) or a dead letter cannot be
  stored, the records not done are reported failed and read again later;
* so a crash after ``PutEvents`` and before the position moved, a lost
  answer retried by botocore, or a redelivered stream record, publishes an
  event again, with the same ``id`` (:func:`~ledger.publishing.events.event_id`):
  consumers dedupe on ``detail.id``.

Order is not kept: EventBridge promises none, and retries reorder. Each
integration event carries ``aggregate_version`` for consumers that keep
state per aggregate.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Final
from uuid import UUID

import boto3
import botocore.config
import botocore.exceptions
from eventsourcing.persistence import IntegrityError, PersistenceError
from eventsourcing.utils import Environment, strtobool

from ledger.dynamodb import connection_of
from ledger.dynamodb.client import is_loopback
from ledger.dynamodb.tables import ensure_table
from ledger.feeds import (
    Batch,
    Checkpoint,
    IndexSource,
    Item,
    Progress,
    Runner,
    StoppedShortError,
)
from ledger.feeds.stream import (
    BatchResponse,
    StreamItem,
    StreamSource,
    handle_records,
    stream_handler,
)
from ledger.projections.deadletters import error_summary
from ledger.projections.history import Undecodable
from ledger.projections.metrics import Metrics
from ledger.publishing import schema
from ledger.publishing.deadletters import (
    DeadLetter,
    delete_dead_letter,
    read_dead_letters,
    store_dead_letter,
)
from ledger.publishing.events import IntegrationEvent, Publication

__all__ = [
    "INDEX_PAGE_SIZE",
    "MAX_ENTRIES_PER_REQUEST",
    "MAX_REQUEST_BYTES",
    "PERMANENT_ENTRY_ERRORS",
    "IndexCursor",
    "PublishReport",
    "Publisher",
    "PublisherConsumer",
    "ShardItems",
    "entry_size",
    "handle_stream_event",
    "lambda_handler",
]

logger = logging.getLogger(__name__)
"""Structured records (``extra=``): ids, counts, error codes; never event data."""

MAX_ENTRIES_PER_REQUEST: Final = 10
"""PutEvents takes at most 10 entries per request."""
MAX_REQUEST_BYTES: Final = 256 * 1024
"""PutEvents takes at most 256 KB of entries per request (and so per entry),
counted by :func:`entry_size`."""
TIME_BYTES: Final = 14
"""What an entry's ``Time`` counts towards its size, whatever its value."""
INDEX_PAGE_SIZE: Final = 100
"""Positions of the application sequence the index mode publishes per batch:
at most 10 ``PutEvents`` requests, so a batch, its resends included, ends
within seconds of the deadline a Lambda invocation checks between batches."""

PERMANENT_ENTRY_ERRORS: Final = frozenset(
    {
        "MalformedDetail",
        "InvalidArgument",
        "AccessDeniedException",
        "NotAuthorizedForSourceException",
        "NotAuthorizedForDetailTypeException",
        "ValidationException",
        "EntryTooLarge",  # ledger's own: refused before sending
        "ParamValidationError",  # botocore's, for one entry sent alone
    }
)
"""Entry error codes no retry can cure: the entry is dead-lettered at once.
Any other code (``InternalFailure``, ``ThrottlingException``, one not known
here) is retried after each of ``retry_delays``."""


def entry_size(entry: Mapping[str, Any]) -> int:
    """Return a PutEvents entry's size as EventBridge counts it.

    14 bytes for ``Time`` if present, plus the UTF-8 bytes of ``Source``,
    ``DetailType``, ``Detail`` and each of ``Resources`` (the rule AWS
    documents in "Calculating PutEvents event entry size").
    """
    size = TIME_BYTES if entry.get("Time") is not None else 0
    for name in ("Source", "DetailType", "Detail"):
        value = entry.get(name)
        if value is not None:
            size += len(str(value).encode())
    return size + sum(len(str(r).encode()) for r in entry.get("Resources", ()))


@dataclass
class _Entry:
    """One integration event on its way to EventBridge."""

    event: IntegrationEvent
    request: dict[str, Any]
    size: int
    record: _Record
    attempts: int = 0
    error: str = ""


@dataclass
class _Record:
    """One stream record: its event's identity and the entries made from it."""

    number: str
    aggregate_id: str
    version: int
    topic: str
    entries: list[_Entry] = field(default_factory=list)
    failed: bool = False
    """Not done: an entry neither accepted nor stored as a dead letter."""


@dataclass
class PublishReport:
    """What a publisher did, summed over the batches it processed."""

    records: int = 0
    """New events read (stream records of other kinds are not counted)."""
    entries: int = 0
    """Integration events made from them."""
    accepted: int = 0
    """Entries EventBridge accepted (an entry retried counts once)."""
    dead_lettered: int = 0
    """Entries and undecodable events stored as dead letters."""
    failed_records: int = 0
    """Records reported failed, to be read again."""
    requests: int = 0
    """PutEvents requests answered (each of botocore's retries not counted)."""
    entry_retries: int = 0
    """Entries sent again after the response reported them failed."""

    def add(self, other: PublishReport) -> None:
        """Add another report's counts to this one."""
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Publisher:
    """Publishes a :class:`Publication`'s integration events to an EventBridge bus.

    ``application`` is the ``eventsourcing`` application (on ledger's
    DynamoDB store) whose events table's stream is read; the publisher's
    own table, ``{prefix}{publication.name}_publishing``, keeps dead letters
    and the local poller's checkpoints. Settings come from ``env`` and
    ``os.environ``, each optionally prefixed with the publication's
    upper-cased name (``ORDEREVENTS_PUBLISHER_EVENT_BUS``).

    Its :attr:`consumer` publishes on either source; the publisher hands
    stream batches to it, so ``StreamPoller(publisher, application).run(stop)``
    publishes the stream locally, and :meth:`runner` the application sequence.
    """

    PUBLISHER_EVENT_BUS = "PUBLISHER_EVENT_BUS"
    """Name or ARN of the EventBridge bus to publish to. Default: ``default``."""
    EVENTBRIDGE_ENDPOINT_URL = "EVENTBRIDGE_ENDPOINT_URL"
    """EventBridge endpoint URL. Default: ``AWS_ENDPOINT_URL_EVENTS`` if set,
    else boto3's own resolution (the AWS regional endpoint)."""
    AWS_ENDPOINT_URL_EVENTS = "AWS_ENDPOINT_URL_EVENTS"
    """boto3's standard key for the EventBridge endpoint (read if the above is
    unset)."""
    EVENTBRIDGE_MAX_ATTEMPTS = "EVENTBRIDGE_MAX_ATTEMPTS"
    """Attempts per PutEvents request on throttling, 5xx and connection errors
    (botocore's standard retry mode, backoff with jitter), before the request
    counts as failed and its records are read again later. Default: 5. A
    request retried after a lost answer may publish its entries twice (same
    ids)."""
    DYNAMODB_TABLE_PREFIX = "DYNAMODB_TABLE_PREFIX"
    """Prepended to the publisher's table name, as to the store's. Default: empty."""
    CREATE_TABLE = "CREATE_TABLE"
    """Create the publisher's table if missing. Default: yes."""

    retry_delays: ClassVar[tuple[float, ...]] = (0.1, 0.5, 2.0)
    """Seconds to wait before each resend of entries the response reported
    failed; after the last, they are dead-lettered. The default keeps a
    batch's worst case under 3 s of waiting (4 attempts)."""

    def __init__(
        self,
        publication: Publication,
        application: Any,
        *,
        env: Mapping[str, str] | None = None,
        events_client: Any = None,
        retry_delays: Sequence[float] | None = None,
    ) -> None:
        if not publication.name:
            raise TypeError(f"{type(publication).__qualname__} has no 'name'")
        self.publication = publication
        self.application = application
        if publication.application is None:
            publication.application = application  # its translators read from it
        self.connection = connection_of(application)
        """The DynamoDB connection of the store (the poller reads it too)."""
        environment = Environment(publication.name, {**os.environ, **(env or {})})
        prefix = environment.get(self.DYNAMODB_TABLE_PREFIX) or ""
        self.table_name = f"{prefix}{publication.name}_publishing"
        if strtobool(environment.get(self.CREATE_TABLE) or "yes"):
            ensure_table(self.connection, schema.table_definition(self.table_name))
        self.event_bus = environment.get(self.PUBLISHER_EVENT_BUS) or "default"
        self.client = events_client or _events_client(
            environment.get(self.EVENTBRIDGE_ENDPOINT_URL)
            or environment.get(self.AWS_ENDPOINT_URL_EVENTS)
            or None,
            self.connection.region_name,
            _attempts(environment.get(self.EVENTBRIDGE_MAX_ATTEMPTS) or "5"),
        )
        self.delays: tuple[float, ...] = (
            self.retry_delays if retry_delays is None else tuple(retry_delays)
        )
        """This publisher's ``retry_delays``."""
        self.mapper = application.mapper
        self._uuid_ids = (
            getattr(application.recorder, "originator_id_type", "uuid") == "uuid"
        )
        self.report = PublishReport()
        """Counts of everything this publisher did (see :class:`PublishReport`)."""
        self.sleep: Callable[[float], None] = time.sleep
        self.cursor = IndexCursor(self.connection, self.table_name, application.name)
        """The index mode's position in the application sequence."""
        self.shard_checkpoints = ShardItems(self.connection, self.table_name)
        """The stream's positions, one per shard (a local poller's)."""
        self.consumer = PublisherConsumer(self)
        """This publisher as a consumer of either source, index or stream."""

    # A consumer of the stream, through its consumer -----------------------------

    @property
    def name(self) -> str:
        """The publication's name (for logs and metrics)."""
        return self.publication.name

    def process(self, batch: Batch) -> Progress:
        """Publish a batch of either source (see :meth:`PublisherConsumer.process`)."""
        return self.consumer.process(batch)

    def _publish(self, batch: list[_Record], report: PublishReport) -> list[str]:
        """Deliver a batch's entries, report it; return its records not done."""
        entries = [entry for record in batch for entry in record.entries]
        report.entries = len(entries)
        self._deliver(entries, report)
        failed = [record.number for record in batch if record.failed]
        report.failed_records = len(failed)
        self.report.add(report)
        _log_batch(self.publication.name, report, failed)
        return failed

    # Following the index ---------------------------------------------------------

    def position(self) -> int:
        """Return the last sequence position the index mode finished (0: none)."""
        return self.cursor.load()

    def runner(
        self,
        *,
        page_size: int = INDEX_PAGE_SIZE,
        metrics: Metrics | None = None,
        interval: float = 1.0,
    ) -> Runner:
        """Return a runner publishing the application sequence after the cursor.

        The index mode, for ``DYNAMODB_ORDERING=indexed`` (or ``sequence``),
        where the events stream has one reader, the indexer: the runner
        reads the sequence ``page_size`` positions at a time
        (:class:`~ledger.feeds.IndexSource`), :attr:`consumer` publishes each
        batch, and the runner then moves the cursor and records the lag
        behind the head (metric ``Lag``, the publication's name as the
        dimension's value) in ``metrics``. ``drain(deadline)`` for a call
        or a Lambda invocation, ``run(stop)`` or ``start()`` to follow the
        sequence as it grows, ``wait(position, timeout)`` for a position.
        """
        return Runner(
            IndexSource(self.application, page_size=page_size),
            self.consumer,
            metrics=metrics,
            interval=interval,
        )

    def follow_index(
        self, *, page_size: int = INDEX_PAGE_SIZE, deadline: float | None = None
    ) -> int:
        """Publish the application sequence after the cursor; return positions done.

        Drains :meth:`runner`: each batch of the sequence after the cursor
        is published as a batch of the stream is (by :attr:`consumer`: retries,
        dead letters, the same event ids), then the cursor moves past the
        batch up to the first event not done, on condition that it still
        holds the position read (of two publishers racing, one moves it;
        the other reads the cursor again, and what it sent again carries
        the same ids: consumers drop it). Stops at the sequence's end, at an
        event not done (sent again at the next call; while a deadline is
        given, tried again, with doubling waits, until it passes), or once
        ``time.monotonic()`` passes ``deadline``; while a deadline is given,
        rides out DynamoDB being unavailable. Raises
        :class:`~ledger.dynamodb.batches.CorruptNotificationBatchError` at a
        batch of the sequence it cannot read (the cursor stays before it).
        Costs per batch: one Query of the sequence (and of the events table
        for batch items too big to hold their events), the ``PutEvents``
        requests, and one PutItem (1 WCU); per call, a GetItem of the cursor
        and one of the sequence's head per pass to the end (two when
        nothing is left).
        """
        runner = self.runner(page_size=page_size)
        try:
            done = runner.drain(deadline)
        except StoppedShortError as short:
            done = short.found  # the cursor is before the event not done
        if runner.blocked is not None:
            raise runner.blocked
        return done

    def _item_record(self, item: Item, report: PublishReport) -> _Record:
        """Make the record of one event a source handed over (a feed's ``Item``)."""
        notification = item.notification
        record = _Record(
            # A stream record's number as the stream spells it (dead letters).
            number=item.sequence_number
            if isinstance(item, StreamItem)
            else str(item.position),
            aggregate_id=str(notification.originator_id),
            version=int(notification.originator_version),
            topic=item.topic,
        )
        self._prepare(record, lambda: item.event, report)
        return record

    def republish(
        self, aggregate_id: Any, *, after: int = 0, up_to: int | None = None
    ) -> PublishReport:
        """Publish an aggregate's events again, from the events table.

        For events the stream no longer holds (records Lambda gave up on):
        the events after version ``after`` up to ``up_to`` (default: all)
        are published as from the stream, with the same ids as before, so
        consumers drop those they already had. Returns what it did; its
        ``failed_records`` counts events neither published nor dead-lettered.
        """
        if self._uuid_ids and not isinstance(aggregate_id, UUID):
            aggregate_id = UUID(str(aggregate_id))
        stored = self.application.recorder.select_events(
            aggregate_id, gt=after or None, lte=up_to
        )
        report = PublishReport(records=len(stored))
        records = []
        for event in stored:
            record = _Record(
                "", str(aggregate_id), event.originator_version, event.topic
            )
            self._prepare(record, partial(self.mapper.to_domain_event, event), report)
            records.append(record)
        entries = [entry for record in records for entry in record.entries]
        report.entries = len(entries)
        self._deliver(entries, report)
        report.failed_records = sum(1 for record in records if record.failed)
        self.report.add(report)
        return report

    # Dead letters ----------------------------------------------------------------

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """Return the dead letters, by aggregate and version."""
        return read_dead_letters(self.connection, self.table_name, limit)

    def redrive(self) -> dict[str, str]:
        """Publish every dead letter's event again; return each key's outcome.

        Each event is read from the events table, decoded and translated by
        the code deployed now (so a fix applies), and sent with the same id
        as before. Outcomes: ``published`` (the dead letter is deleted),
        ``failed`` (it stays, with its new error and attempts), ``missing``
        (no such event in the events table: it stays).
        """
        outcomes: dict[str, str] = {}
        for letter in self.dead_letters():
            outcomes[letter.key] = self._redrive(letter)
        return outcomes

    def _redrive(self, letter: DeadLetter) -> str:
        originator_id: Any = (
            UUID(letter.aggregate_id) if self._uuid_ids else letter.aggregate_id
        )
        stored = self.application.recorder.select_events(
            originator_id, gt=letter.version - 1, lte=letter.version
        )
        if not stored:
            return "missing"
        record = _Record("", letter.aggregate_id, letter.version, stored[0].topic)
        report = PublishReport(records=1)
        try:
            domain_event = self.mapper.to_domain_event(stored[0])
            self._add_entries(record, domain_event)
        except Exception as error:  # noqa: BLE001 - still broken: the letter stays
            # The same dead letter again, with the new error.
            reason = error_summary(error, " on redrive")
            self._store(record, letter.detail_type, letter.event_id, reason, 0)
            return "failed"
        if letter.detail_type != schema.NO_DETAIL_TYPE:
            record.entries = [
                e for e in record.entries if e.event.detail_type == letter.detail_type
            ]
        report.entries = len(record.entries)
        self._deliver(record.entries, report)
        self.report.add(report)
        rewritten = {
            schema.dead_letter_key(
                letter.aggregate_id, letter.version, e.event.detail_type
            )
            for e in record.entries
            if e.error
        }
        if record.failed or letter.key in rewritten:
            return "failed"
        delete_dead_letter(self.connection, self.table_name, letter)
        return "failed" if rewritten else "published"

    # Making entries --------------------------------------------------------------

    def _prepare(
        self, record: _Record, decode: Callable[[], Any], report: PublishReport
    ) -> None:
        """Make a record's entries, or dead-letter it: undecodable, untranslatable.

        ``decode`` returns the domain event (None: nothing to publish), or an
        :class:`~ledger.projections.history.Undecodable`, or raises.
        """
        try:
            domain_event = decode()
            if domain_event is not None and not isinstance(domain_event, Undecodable):
                self._add_entries(record, domain_event)
        except Exception as error:  # noqa: BLE001 - dead-lettered, never dropped
            reason = error_summary(error, " while decoding or translating")
        else:
            if not isinstance(domain_event, Undecodable):
                return
            reason = domain_event.error
        record.entries = []
        if self._store(record, schema.NO_DETAIL_TYPE, "", reason, 0):
            report.dead_lettered += 1

    def entries_for(self, domain_event: Any) -> list[dict[str, Any]]:
        """Return the PutEvents entries this publisher makes of one domain event."""
        return [
            self._request(event) for event in self.publication.translate(domain_event)
        ]

    def _request(self, event: IntegrationEvent) -> dict[str, Any]:
        return {
            "Source": event.source,
            "DetailType": event.detail_type,
            "Detail": event.model_dump_json(),
            "EventBusName": self.event_bus,
            "Time": event.occurred_at,
        }

    def _add_entries(self, record: _Record, domain_event: Any) -> None:
        for event in self.publication.translate(domain_event):
            request = self._request(event)
            record.entries.append(_Entry(event, request, entry_size(request), record))

    # Sending ---------------------------------------------------------------------

    def _deliver(self, entries: list[_Entry], report: PublishReport) -> None:
        """Send entries until each is accepted, dead-lettered or left failed."""
        pending = []
        for entry in entries:
            if entry.size > MAX_REQUEST_BYTES:
                entry.error = "EntryTooLarge"
                self._dead_letter(entry, report)
            else:
                pending.append(entry)
        for retry in range(len(self.delays) + 1):
            if retry:
                self.sleep(self.delays[retry - 1])
                report.entry_retries += len(pending)
            failing, unsent = self._send_once(pending, report)
            if unsent:
                for entry in unsent:
                    entry.record.failed = True
                return
            pending = []
            for entry in failing:
                if entry.error in PERMANENT_ENTRY_ERRORS:
                    self._dead_letter(entry, report)
                else:
                    pending.append(entry)
            if not pending:
                return
        for entry in pending:  # still failing after the last retry
            self._dead_letter(entry, report)

    def _send_once(
        self, entries: list[_Entry], report: PublishReport
    ) -> tuple[list[_Entry], list[_Entry]]:
        """Send each entry once; return those refused and those left unsent.

        Entries are unsent when a request failed as a whole: that one's and
        every later one's, and those refused so far (nothing more is tried
        while EventBridge does not answer).
        """
        refused: list[_Entry] = []
        batches = list(_batches(entries))
        for index, batch in enumerate(batches):
            try:
                results = self._put_events(batch)
            except _RequestFailedError:
                unsent = [e for b in batches[index:] for e in b]
                return [], refused + unsent
            report.requests += 1
            for entry, result in zip(batch, results, strict=True):
                entry.attempts += 1
                code = result.get("ErrorCode")
                if code or not result.get("EventId"):
                    entry.error = str(code or "NoEventId")
                    refused.append(entry)
                else:
                    entry.error = ""
                    report.accepted += 1
        return refused, []

    def _put_events(self, batch: list[_Entry]) -> list[dict[str, Any]]:
        """One PutEvents request; its per-entry results, in the entries' order."""
        try:
            response = self.client.put_events(Entries=[e.request for e in batch])
        except botocore.exceptions.ParamValidationError:
            if len(batch) > 1:
                # One entry botocore refuses must not hold up the others.
                return [r for e in batch for r in self._put_events([e])]
            return [{"ErrorCode": "ParamValidationError"}]
        except (
            botocore.exceptions.ClientError,
            botocore.exceptions.BotoCoreError,
        ) as error:
            code = (
                error.response.get("Error", {}).get("Code", "")
                if isinstance(error, botocore.exceptions.ClientError)
                else type(error).__name__
            )
            logger.warning(
                "PutEvents failed as a whole; its records will be read again",
                extra={
                    "publication": self.publication.name,
                    "entries": len(batch),
                    "error": code,
                    "event_bus": self.event_bus,
                },
            )
            raise _RequestFailedError(code) from error
        results: list[dict[str, Any]] = response.get("Entries", [])
        if len(results) != len(batch):
            raise _RequestFailedError("EntriesMismatch")
        return results

    def _dead_letter(self, entry: _Entry, report: PublishReport) -> None:
        if self._store(
            entry.record,
            entry.event.detail_type,
            str(entry.event.id),
            entry.error,
            entry.attempts,
        ):
            report.dead_lettered += 1
        else:
            entry.record.failed = True

    def _store(
        self,
        record: _Record,
        detail_type: str,
        event_id: str,
        error: str,
        attempts: int,
    ) -> bool:
        """Store a dead letter and log it; False (its record failed) if it could not."""
        letter = DeadLetter(
            aggregate_id=record.aggregate_id or f"-{record.number}",
            version=record.version,
            detail_type=detail_type,
            event_id=event_id,
            topic=record.topic,
            error=error,
            attempts=attempts,
            sequence_number=record.number,
        )
        try:
            store_dead_letter(self.connection, self.table_name, letter)
        except PersistenceError as failure:
            record.failed = True
            logger.warning(
                "could not store a dead letter; its record will be read again",
                extra={
                    "publication": self.publication.name,
                    "aggregate_id": letter.aggregate_id,
                    "version": letter.version,
                    "error": type(failure).__name__,
                },
            )
            return False
        logger.error(
            "integration event dead-lettered: %s v%d %s (%s)",
            letter.aggregate_id,
            letter.version,
            detail_type,
            error,
            extra={
                "publication": self.publication.name,
                "aggregate_id": letter.aggregate_id,
                "version": letter.version,
                "detail_type": detail_type,
                "event_id": event_id,
                "error": error,
                "attempts": attempts,
            },
        )
        return True


class IndexCursor:
    """The index mode's position: the cursor item in the publisher's table.

    A :class:`~ledger.feeds.Checkpoint`: the last position of the
    application sequence whose entries were all accepted or dead-lettered,
    under ``kind = cursor``, ``key`` = the application's name. Saved on
    condition that it still holds the position read, so of two publishers
    racing one moves it, and the other is told it raced.
    """

    def __init__(self, connection: Any, table_name: str, application_name: str) -> None:
        """Keep the cursor of ``application_name``'s sequence in ``table_name``."""
        self.connection = connection
        self.table_name = table_name
        self.key = {
            schema.KIND: {"S": schema.CURSOR},
            schema.KEY: {"S": str(application_name)},
        }

    def load(self) -> int:
        """Return the cursor (0: none), read strongly consistently (one GetItem)."""
        item = self.connection.call(
            "get_item", TableName=self.table_name, Key=self.key, ConsistentRead=True
        ).get("Item")
        return 0 if item is None else int(item[schema.POSITION]["N"])

    def save(self, position: int, expected: int) -> bool:
        """Move the cursor from ``expected`` to ``position``; False if raced (1 WCU)."""
        try:
            self.connection.call(
                "put_item",
                TableName=self.table_name,
                Item={**self.key, schema.POSITION: {"N": str(position)}},
                ConditionExpression="attribute_not_exists(#position) OR "
                "#position = :expected",
                ExpressionAttributeNames={"#position": schema.POSITION},
                ExpressionAttributeValues={":expected": {"N": str(expected)}},
            )
        except IntegrityError:
            return False
        return True


class ShardItems:
    """The stream's positions: one ``shard`` item per shard in the publisher's table.

    A :class:`~ledger.feeds.ShardCheckpoints`: ``kind = shard``, ``key`` =
    the shard's id, holding the sequence number of the last record done.
    """

    def __init__(self, connection: Any, table_name: str) -> None:
        """Keep the positions in ``table_name``."""
        self.connection = connection
        self.table_name = table_name

    def checkpoint(self, shard_id: str) -> str | None:
        """Return the last record done in a shard (the local poller's position)."""
        item = self.connection.call(
            "get_item",
            TableName=self.table_name,
            Key={schema.KIND: {"S": schema.SHARD}, schema.KEY: {"S": shard_id}},
            ConsistentRead=True,
        ).get("Item")
        return None if item is None else str(item[schema.SEQUENCE_NUMBER]["S"])

    def save_checkpoint(self, shard_id: str, number: str) -> None:
        """Record the last record done in a shard."""
        self.connection.call(
            "put_item",
            TableName=self.table_name,
            Item={
                schema.KIND: {"S": schema.SHARD},
                schema.KEY: {"S": shard_id},
                schema.SEQUENCE_NUMBER: {"S": number},
            },
        )


class PublisherConsumer:
    """A publisher as a consumer of either source: the sequence, or the stream.

    Not atomic: :meth:`process` publishes a batch (retries, dead letters),
    then the position moves (the runner saves the cursor, the stream poller
    a shard's checkpoint, Lambda its own), so a crash between the two
    publishes the batch again, with the same ids (at least once: consumers
    dedupe on ``detail.id``). It reads every topic; an event no translator
    takes is done at once. On the stream, an image that is not a whole
    event, or an event that cannot be decoded, is dead-lettered as one
    that cannot be translated.
    """

    atomic = False
    topics: Sequence[str] = ()

    def __init__(self, publisher: Publisher) -> None:
        """Publish ``publisher``'s publication, keeping its position in its cursor."""
        self.publisher = publisher
        self.name: str = publisher.publication.name
        self.checkpoint: Checkpoint = publisher.cursor
        self.shard_checkpoints = publisher.shard_checkpoints
        self.not_done = 0
        """Events of the last batch neither published nor dead-lettered (a
        ``PutEvents`` request failed as a whole, or a dead letter could not
        be stored): the position stopped before the first of them."""

    def process(self, batch: Batch) -> Progress:
        """Publish a batch; return the position up to the first event not done."""
        publisher = self.publisher
        report = PublishReport(records=len(batch.items))
        records = [publisher._item_record(item, report) for item in batch.items]
        publisher._publish(records, report)
        self.not_done = report.failed_records
        done = next((i for i, r in enumerate(records) if r.failed), len(records))
        if done == len(records):
            return Progress(done, batch.checkpoint)
        # Everything before the first event not done is done (or of no topic read).
        return Progress(done, batch.items[done].position - 1)


class _RequestFailedError(Exception):
    """A PutEvents request failed as a whole (after botocore's retries)."""


def _batches(entries: Iterable[_Entry]) -> Iterator[list[_Entry]]:
    """Group entries into PutEvents requests: at most 10 and 256 KB each."""
    batch: list[_Entry] = []
    size = 0
    for entry in entries:
        if batch and (
            len(batch) == MAX_ENTRIES_PER_REQUEST
            or size + entry.size > MAX_REQUEST_BYTES
        ):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry.size
    if batch:
        yield batch


def _log_batch(name: str, report: PublishReport, failed: list[str]) -> None:
    logger.log(
        logging.WARNING if failed else logging.INFO,
        "published a stream batch",
        extra={
            "publication": name,
            "records": report.records,
            "entries": report.entries,
            "accepted": report.accepted,
            "dead_lettered": report.dead_lettered,
            "failed": report.failed_records,
            "requests": report.requests,
            "entry_retries": report.entry_retries,
            "sequence_numbers": failed[:10],
        },
    )


def _attempts(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise OSError(
            f"Invalid {Publisher.EVENTBRIDGE_MAX_ATTEMPTS} {value!r}: use a whole "
            "number of at least 1."
        )
    return int(value)


def _events_client(endpoint_url: str | None, region: str, max_attempts: int) -> Any:
    session = boto3.session.Session()
    key_id = secret = None
    if is_loopback(endpoint_url) and session.get_credentials() is None:
        key_id = secret = "local"  # noqa: S105 - a local endpoint's placeholder
    return session.client(
        "events",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=5.0,
            read_timeout=30.0,
        ),
    )


# --- AWS Lambda --------------------------------------------------------------------


def handle_stream_event(
    event: Mapping[str, Any],
    publisher: Publisher,
    *,
    events_table: str | None = None,
    stream_arn: str | None = None,
) -> BatchResponse:
    """Publish a Lambda DynamoDB Streams event; return its partial-batch response.

    With ``events_table`` (and its ``stream_arn``), only records from that
    table's stream are read (:func:`~ledger.feeds.from_table`).
    """
    return handle_records(
        event,
        publisher.consumer,
        StreamSource.of(publisher.application),
        events_table=events_table,
        stream_arn=stream_arn,
    )


def lambda_handler(
    publication_class: type[Publication],
    application_class: type[Any],
    env: Mapping[str, str] | None = None,
) -> Callable[[Mapping[str, Any], Any], BatchResponse]:
    """Return a Lambda handler publishing an application's stream records.

    The application and publisher are made at the first invocation, and
    kept. Configure the event source mapping with ``ReportBatchItemFailures``;
    records reported failed are delivered again (a crash is the same: the
    whole batch again), each time with the same integration event ids. The
    retries' waits are bounded by ``retry_delays``; a record meeting
    EventBridge or DynamoDB unavailable fails and is delivered again.
    """

    def make() -> tuple[Publisher, Any]:
        application = application_class(env=dict(env) if env is not None else None)
        return Publisher(publication_class(), application, env=env), application

    return stream_handler(make)
