"""Feeding projectors from DynamoDB Streams: a Lambda handler and a local poller.

The stream itself (decoding records, the :class:`StreamPoller`, the one
Lambda handler for pushed records) is :mod:`ledger.feeds.stream`; its names
are importable from here too. This module is what a projector adds: how a
batch of one shard's records is applied (:class:`ProjectionConsumer`, a
consumer of the reader interface fed :class:`~ledger.feeds.Batch`es).

DynamoDB orders stream records per item only, and delivers them at least
once. So this feed does not track one position: it tracks the last version
applied *per aggregate* (committed with the read-model writes), ignores a
record at or below it (a duplicate), and on a gap reads the missing events
from the events table (strongly consistent Query) before applying. It needs no
global sequence, so it scales with the table's partitions (stream shards) and
Lambda's concurrency: records of different aggregates may be processed in any
interleaving, by any number of workers, and the read model comes out the same.

So it refuses (``OnePositionViewError``, before applying anything) a view
that keeps one position for the application, one fed by its sequence: such a
view holds no version per aggregate, and every earlier event would look
missing and be applied again (see :class:`ProjectionConsumer`).

A batch stops at the first record it could not process (a record whose
commit failed, or whose missing earlier events a projector without
``load_events`` cannot read): the records from it on are read again (in
Lambda, reported as ``batchItemFailures``). Later records of the same
aggregate in the batch are not applied, so an aggregate's events are never
applied out of order; those of other aggregates are, and are duplicates when
read again. A handler that keeps failing, an event that cannot be decoded, and an
earlier version that stays unreadable (a ``GapError``) are not batch
failures: the event is parked (see :mod:`ledger.projections.deadletters`).
Each batch is summarised on ``ledger.projections.streams`` and its size and
iterator age recorded (:mod:`ledger.projections.metrics`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from eventsourcing.persistence import DataError, Mapper, PersistenceError

from ledger.dynamodb import schema as store_schema
from ledger.feeds.base import Batch, Progress
from ledger.feeds.polling import run_polls
from ledger.feeds.stream import (
    INSERT,
    StreamItem,
    StreamPoller,
    StreamSource,
    decode_record,
    feed_records,
    from_table,
    handle_records,
    progress_before,
    sequence_number,
    stream_arn_of,
    stream_handler,
)
from ledger.projections.history import Undecodable
from ledger.projections.metrics import (
    metrics_from_env,
    noting_outcome,
    report_batch,
)
from ledger.projections.metrics import report_records_failed as _report_failed
from ledger.projections.models import Outcome
from ledger.projections.projector import Projector
from ledger.projections.session import Session
from ledger.projections.views import ActiveVersionChangedError, ConcurrentChangeError

__all__ = [
    "INSERT",
    "ProjectionConsumer",
    "StreamPoller",
    "ViewCheckpoints",
    "decode_record",
    "from_table",
    "handle_stream_event",
    "lambda_handler",
    "process_records",
    "run_polls",
    "sequence_number",
    "stream_arn_of",
]

logger = logging.getLogger(__name__)
"""Structured records (``extra=``): ids, counts, sources; never event state."""

_MAX_RECORD_ATTEMPTS = 10


def process_records(
    projector: Projector,
    records: Sequence[Mapping[str, Any]],
    mapper: Mapper[Any],
    *,
    park_undecodable: bool = True,
    application_name: str | None = None,
) -> list[str]:
    """Apply one shard's stream records; return the sequence numbers not done.

    The records are one batch (:class:`~ledger.feeds.StreamSource`) for a
    :class:`ProjectionConsumer` (see :meth:`ProjectionConsumer.process`);
    every record from the first that failed on is returned, as Lambda's
    partial-batch response names them.
    """
    consumer = ProjectionConsumer(
        projector,
        mapper,
        application_name=application_name,
        park_undecodable=park_undecodable,
    )
    return feed_records(consumer, records, consumer.source)


def _process_items(
    projector: Projector,
    items: Sequence[StreamItem],
    source: StreamSource,
    outcomes: dict[str, Outcome],
    *,
    park_undecodable: bool,
    application_name: str | None,
) -> list[str]:
    # ledger's own partial-batch logic, not Powertools' BatchProcessor: that
    # handles each stream record on its own (only its SQS FIFO processor skips
    # a failed group), so it would apply an aggregate's later event after an
    # earlier one failed. Here a failed record fails every later record of its
    # aggregate in the batch, and the others commit together.
    failed: list[str] = []
    failed_aggregates: set[str] = set()
    pending: list[tuple[str, str | None, Action]] = []
    session = Session(projector.view)
    who = {"projection": projector.name}

    def fail(number: str, aggregate_id: str | None) -> None:
        failed.append(number)
        if aggregate_id is not None:
            failed_aggregates.add(aggregate_id)

    def flush() -> None:
        try:
            projector.commit(session)
        except (ConcurrentChangeError, ActiveVersionChangedError) as error:
            _after_conflict(projector, session, error, application_name)
            for number, aggregate_id, action in pending:
                if aggregate_id in failed_aggregates:
                    failed.append(number)
                elif not _apply_alone(projector, action, application_name):
                    fail(number, aggregate_id)
        except PersistenceError as error:
            session.forget()
            _report_failed(logger, who, pending, error)
            for number, aggregate_id, _ in pending:
                fail(number, aggregate_id)
        pending.clear()

    for item in items:
        number = item.sequence_number
        aggregate_id = item.aggregate_id
        if aggregate_id in failed_aggregates:
            failed.append(number)
            continue
        try:
            action = _action_for(projector, item, source, park=park_undecodable)
        except Exception as error:  # noqa: BLE001 - an undecodable record is reported, not raised
            _report_failed(logger, who, [(number, aggregate_id)], error)
            fail(number, aggregate_id)
            continue
        action = noting_outcome(action, outcomes, number)
        try:
            session.fit(action, flush if pending else None)
        except PersistenceError:
            raise
        except Exception as error:  # noqa: BLE001 - a gap that cannot be filled, say
            _report_failed(logger, who, [(number, aggregate_id)], error)
            fail(number, aggregate_id)
            continue
        pending.append((number, aggregate_id, action))
    flush()
    return failed


Action = Callable[[Session], object]
"""Applies (or parks) one record's event into a session."""


def _action_for(
    projector: Projector, item: StreamItem, source: StreamSource, *, park: bool
) -> Action:
    """Return what applies an item's event.

    Raises what decoding its record raises, unless ``park`` (and the record
    says whose event it is): then returns what parks it.
    """
    event = item.event
    position = _position(item.record)
    if not isinstance(event, Undecodable):
        return lambda session: projector.apply(session, event, position)
    image = item.record.get("dynamodb", {}).get("NewImage", {})
    aggregate_id = item.aggregate_id
    if not park or aggregate_id is None or store_schema.VERSION not in image:
        # Decoded again to raise the error itself: its type and place are logged.
        decode_record(item.record, source.mapper, uuid_ids=source.uuid_ids)
        raise DataError(event.error)
    version = int(image[store_schema.VERSION]["N"])
    topic = image.get(store_schema.TOPIC, {}).get("S", "")
    return lambda session: projector.park_record(
        session,
        aggregate_id,
        version,
        topic=topic,
        error=event.error,
        position=position,
    )


def _position(record: Mapping[str, Any]) -> int | None:
    image = record.get("dynamodb", {}).get("NewImage", {})
    position = image.get(store_schema.POSITION)
    return None if position is None else int(position["N"])


def _after_conflict(
    projector: Projector,
    session: Session,
    error: Exception,
    application_name: str | None,
) -> None:
    session.forget()
    if isinstance(error, ActiveVersionChangedError):
        projector.view.follow_active()
        # The version switched to may be one rebuilt from the sequence.
        if application_name is not None:
            projector.view.refuse_feed_per_aggregate(application_name)


def _apply_alone(
    projector: Projector, action: Action, application_name: str | None
) -> bool:
    """Apply one record in its own commit, retrying conflicts; False if it failed."""
    for _ in range(_MAX_RECORD_ATTEMPTS):
        session = Session(projector.view)
        try:
            action(session)
            projector.commit(session)
        except (ConcurrentChangeError, ActiveVersionChangedError) as error:
            _after_conflict(projector, session, error, application_name)
        except PersistenceError:
            return False
        else:
            return True
    return False


def handle_stream_event(
    event: Mapping[str, Any],
    projector: Projector,
    mapper: Mapper[Any],
    *,
    events_table: str | None = None,
    stream_arn: str | None = None,
    application_name: str | None = None,
) -> dict[str, list[dict[str, str]]]:
    """Process a Lambda DynamoDB Streams event; return its partial-batch response.

    Configure the event source mapping with ``ReportBatchItemFailures``. With
    ``events_table`` (and its ``stream_arn``), only records from that
    table's stream are applied (:func:`from_table`). With
    ``application_name``, a view fed by that application's sequence is
    refused (see :func:`process_records`).
    """
    consumer = ProjectionConsumer(projector, mapper, application_name=application_name)
    return handle_records(
        event,
        consumer,
        consumer.source,
        events_table=events_table,
        stream_arn=stream_arn,
    )


def lambda_handler(
    projector_class: type[Projector],
    application_class: type[Any],
    env: Mapping[str, str] | None = None,
) -> Callable[[Mapping[str, Any], Any], dict[str, list[dict[str, str]]]]:
    """Return a Lambda handler feeding ``projector_class`` from the events stream.

    The application and view are made on the first invocation and reused by
    later ones (Lambda keeps the process warm)::

        handler = lambda_handler(OrderProjector, Orders)
    """
    from ledger.projections.dynamodb import open_view  # noqa: PLC0415
    from ledger.projections.projector import event_loader  # noqa: PLC0415

    def make() -> tuple[ProjectionConsumer, Any]:
        application = application_class(env=env)
        view = open_view(projector_class, env)
        projector = projector_class(
            view,
            event_loader(application),
            metrics=metrics_from_env(projector_class, env),
        )
        consumer = ProjectionConsumer(
            projector, application.mapper, application_name=application.name
        )
        return consumer, application

    return stream_handler(make)


class ViewCheckpoints:
    """A projection's positions in the events stream, in its control table."""

    def __init__(self, view: Any) -> None:
        """Keep ``view``'s positions in its control table."""
        self.view = view
        self.connection = view.connection

    def checkpoint(self, shard_id: str) -> str | None:
        """Return the shard's checkpoint from the projection's control table."""
        number: str | None = self.view.control.shard_checkpoint(shard_id)
        return number

    def save_checkpoint(self, shard_id: str, number: str) -> None:
        """Store the shard's checkpoint in the projection's control table."""
        self.view.control.save_shard_checkpoint(shard_id, number)


class ProjectionConsumer:
    """A projector as a consumer of the events stream (the legacy ``stream`` feed).

    Each batch (one shard's records) is applied in as few commits as fit;
    the read-model writes carry each aggregate's position, so a record at or
    below it is a duplicate, and a gap is read from the events table first.
    The batch's position stops before the first record that failed (a commit
    refused, a gap that cannot be read yet): it and everything after it in
    the shard is handed over again, and what was applied after it is then a
    duplicate. A record that cannot be decoded is parked as a dead letter
    (its aggregate waits for a redrive), since a poller cannot hand it back
    to its source; with ``park_undecodable=False`` it fails instead. Its
    shard positions are kept in the projection's control table
    (:class:`ViewCheckpoints`). With ``application_name`` (the
    :class:`StreamPoller` gives its application's), a view fed by that
    application's sequence is refused
    (:meth:`~ledger.projections.views.ReadModelView.refuse_feed_per_aggregate`,
    ``OnePositionViewError``; one GetItem per view and table version)
    before anything is applied, and again after a rebuild switched
    versions mid-batch: such a view holds no version per aggregate.
    """

    atomic = True
    """Its writes carry the per-aggregate positions; the shard's is saved after."""
    topics: tuple[str, ...] = ()

    def __init__(
        self,
        projector: Projector,
        mapper: Mapper[Any],
        *,
        application_name: str | None = None,
        park_undecodable: bool = True,
    ) -> None:
        """Apply ``mapper``'s application's stream records to ``projector``."""
        self.projector = projector
        self.name = projector.name
        self.mapper = mapper
        self.application_name = application_name
        self.park_undecodable = park_undecodable
        self.shard_checkpoints = ViewCheckpoints(projector.view)
        # Aggregate ids come back as the store is configured (ORIGINATOR_ID_TYPE).
        uuid_ids = getattr(projector.view, "originator_id_type", "uuid") == "uuid"
        self.source = StreamSource(mapper, uuid_ids=uuid_ids)
        """How records pushed by Lambda are made a batch."""

    def process(self, batch: Batch) -> Progress:
        """Apply a batch; return the position before the first record that failed."""
        projector = self.projector
        if self.application_name is not None:
            projector.view.refuse_feed_per_aggregate(self.application_name)
        received = time.time()
        outcomes: dict[str, Outcome] = {}
        items = cast("Sequence[StreamItem]", batch.items)
        try:
            failed = _process_items(
                projector,
                items,
                self.source,
                outcomes,
                park_undecodable=self.park_undecodable,
                application_name=self.application_name,
            )
            report_batch(
                projector,
                logger,
                [item.record for item in items],
                outcomes=outcomes,
                failed=failed,
                received=received,
            )
        finally:
            projector.metrics.flush()
        applied = sum(1 for o in outcomes.values() if o is Outcome.APPLIED)
        return progress_before(batch, failed, applied)
