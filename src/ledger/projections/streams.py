"""Feeding projectors from DynamoDB Streams: a Lambda handler and a local poller.

The stream itself (decoding records, the :class:`StreamPoller`, the one
Lambda handler for pushed records) is :mod:`ledger.feeds.stream`; its names
are importable from here too. This module is what a projector adds: how a
batch of records is applied. (Just over 400 lines as one concept: a
batch's decoding, per-aggregate ordering and failure rules, and the Lambda
handler and poller consumer built on them.)

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
missing and be applied again (see :func:`process_records`).

A batch reports the records it could not process (a record whose commit
failed, or whose missing earlier events a projector without ``load_events``
cannot read) as ``batchItemFailures``; later records of the same aggregate in
the batch are reported too, so an aggregate's events are never applied out of
order. A handler that keeps failing, an event that cannot be decoded, and an
earlier version that stays unreadable (a ``GapError``) are not batch
failures: the event is parked (see :mod:`ledger.projections.deadletters`).
Each batch is summarised on ``ledger.projections.streams`` and its size and
iterator age recorded (:mod:`ledger.projections.metrics`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eventsourcing.persistence import Mapper, PersistenceError

from ledger.dynamodb import schema as store_schema
from ledger.feeds.polling import run_polls
from ledger.feeds.stream import (
    INSERT,
    StreamConsumer,
    StreamPoller,
    _aggregate_of,
    decode_record,
    from_table,
    handle_records,
    sequence_number,
    stream_arn_of,
    stream_handler,
)
from ledger.projections.deadletters import error_summary
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
    "StreamConsumer",
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
    """Apply a batch of stream records; return the sequence numbers that failed.

    Records are applied into one session and committed together (as many
    per transaction as fit); if a commit meets another writer, its records
    are applied again one by one. A record that cannot be decoded is parked
    as a dead letter (its aggregate waits; redrive it after the fix), or
    with ``park_undecodable=False`` reported failed with its aggregate's
    later records. Parking is the default on Lambda too: a failed record
    would be retried until the mapping gives up, then reach the on-failure
    destination as metadata only, and expire from the stream in 24 hours.

    ``application_name`` names the application whose events table the
    records come from (:func:`lambda_handler` and :class:`StreamPoller` give
    it). With it, a view that keeps one position for that application (fed
    by its sequence) is refused before anything is applied
    (:meth:`~ledger.projections.views.ReadModelView.refuse_feed_per_aggregate`,
    ``OnePositionViewError``; one GetItem per view and table version), and
    again after a rebuild switched versions mid-batch. Without it the view
    is not checked.
    """
    if application_name is not None:
        projector.view.refuse_feed_per_aggregate(application_name)
    received = time.time()
    outcomes: dict[str, Outcome] = {}
    try:
        failed = _process_records(
            projector,
            records,
            mapper,
            outcomes,
            park_undecodable=park_undecodable,
            application_name=application_name,
        )
        report_batch(
            projector,
            logger,
            records,
            outcomes=outcomes,
            failed=failed,
            received=received,
        )
    finally:
        projector.metrics.flush()
    return failed


def _process_records(
    projector: Projector,
    records: Sequence[Mapping[str, Any]],
    mapper: Mapper[Any],
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
    # Aggregate ids come back as the store is configured (ORIGINATOR_ID_TYPE).
    uuid_ids = getattr(projector.view, "originator_id_type", "uuid") == "uuid"
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

    for record in records:
        number = sequence_number(record)
        aggregate_id = _aggregate_of(record)
        if aggregate_id in failed_aggregates:
            failed.append(number)
            continue
        try:
            action = _action_for(
                projector, record, mapper, uuid_ids=uuid_ids, park=park_undecodable
            )
        except Exception as error:  # noqa: BLE001 - an undecodable record is reported, not raised
            _report_failed(logger, who, [(number, aggregate_id)], error)
            fail(number, aggregate_id)
            continue
        if action is None:
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
    projector: Projector,
    record: Mapping[str, Any],
    mapper: Mapper[Any],
    *,
    uuid_ids: bool,
    park: bool,
) -> Action | None:
    """Return what applies a record's event (None: no new event).

    Raises if the record cannot be decoded, unless ``park``: then what parks it.
    """
    try:
        event = decode_record(record, mapper, uuid_ids=uuid_ids)
    except Exception as error:
        aggregate_id = _aggregate_of(record)
        if not park or aggregate_id is None:
            raise
        return _parking(projector, record, aggregate_id, error)
    return None if event is None else _applying(projector, event, _position(record))


def _applying(projector: Projector, event: Any, position: int | None) -> Action:
    return lambda session: projector.apply(session, event, position)


def _parking(
    projector: Projector, record: Mapping[str, Any], aggregate_id: str, error: Exception
) -> Action:
    image = record["dynamodb"]["NewImage"]
    version = int(image[store_schema.VERSION]["N"])
    topic = image.get(store_schema.TOPIC, {}).get("S", "")
    reason = error_summary(error, " while decoding the stream record")
    return lambda session: projector.park_record(
        session,
        aggregate_id,
        version,
        topic=topic,
        error=reason,
        position=_position(record),
    )


def _position(record: Mapping[str, Any]) -> int | None:
    position = record["dynamodb"].get("NewImage", {}).get(store_schema.POSITION)
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
    return handle_records(
        event,
        ProjectionConsumer(projector, mapper, application_name=application_name),
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
    """Shard checkpoints kept in a projection's control table."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.connection = view.connection

    def checkpoint(self, shard_id: str) -> str | None:
        """Return the shard's checkpoint from the projection's control table."""
        number: str | None = self.view.control.shard_checkpoint(shard_id)
        return number

    def save_checkpoint(self, shard_id: str, number: str) -> None:
        """Store the shard's checkpoint in the projection's control table."""
        self.view.control.save_shard_checkpoint(shard_id, number)

    def process(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Refuse: checkpoints alone do not process records (see status)."""
        raise NotImplementedError


class ProjectionConsumer(ViewCheckpoints):
    """A projector as a stream consumer: checkpoints in its control table.

    A record that cannot be decoded is parked as a dead letter (its aggregate
    waits for a redrive), since a poller cannot hand it back to its source.
    With ``application_name`` (the :class:`StreamPoller` gives its
    application's), a view fed by that application's sequence is refused.
    """

    def __init__(
        self,
        projector: Projector,
        mapper: Mapper[Any],
        *,
        application_name: str | None = None,
    ) -> None:
        super().__init__(projector.view)
        self.projector = projector
        self.name = projector.name
        self.mapper = mapper
        self.application_name = application_name

    def process(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Apply records to the projector (see :func:`process_records`)."""
        return process_records(
            self.projector,
            records,
            self.mapper,
            application_name=self.application_name,
        )
