"""Feeding projectors from DynamoDB Streams: a Lambda handler and a local poller.

(Over 400 lines as one concept: Lambda batches and the poller share the
decoding, per-aggregate ordering and failure rules below.)

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

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, cast
from uuid import UUID

import botocore.exceptions
from eventsourcing.persistence import (
    DataError,
    Mapper,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
)

from ledger.dynamodb import schema as store_schema
from ledger.dynamodb.client import (
    MAX_OUTAGE_WAIT,
    Outage,
    translate_client_error,
    translate_errors,
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

logger = logging.getLogger(__name__)
"""Structured records (``extra=``): ids, counts, sources; never event state."""

INSERT = "INSERT"
"""The only stream records projected: events are never modified or removed."""
_MAX_RECORD_ATTEMPTS = 10


_EVENT_ATTRIBUTES = (
    (store_schema.AGGREGATE_ID, "S"),
    (store_schema.VERSION, "N"),
    (store_schema.TOPIC, "S"),
    (store_schema.STATE, "B"),
)
"""Attributes (and types) every event item has."""


def decode_record(
    record: Mapping[str, Any], mapper: Mapper[Any], *, uuid_ids: bool = True
) -> Any | None:
    """Return the domain event in a stream record, or None if it is no new event.

    Accepts both shapes: Lambda's JSON (binary as base64 text) and the boto3
    ``dynamodbstreams`` client's (binary as bytes).
    """
    if record.get("eventName") != INSERT:
        return None
    image = record.get("dynamodb", {}).get("NewImage", {})
    missing = [
        name
        for name, kind in _EVENT_ATTRIBUTES
        if not isinstance(image.get(name), Mapping) or kind not in image[name]
    ]
    if missing:
        raise DataError(
            f"Stream record {record.get('dynamodb', {}).get('SequenceNumber')} "
            f"is not an event of ledger's events table: its new image lacks "
            f"{', '.join(missing)}. Is the function wired to the right table's "
            "stream (NEW_IMAGE view)?"
        )
    state = image[store_schema.STATE]["B"]
    if isinstance(state, str):
        state = base64.b64decode(state)
    aggregate_id = image[store_schema.AGGREGATE_ID]["S"]
    stored = StoredEvent(
        originator_id=UUID(aggregate_id) if uuid_ids else aggregate_id,
        originator_version=int(image[store_schema.VERSION]["N"]),
        topic=image[store_schema.TOPIC]["S"],
        state=bytes(state),
    )
    return mapper.to_domain_event(stored)


def sequence_number(record: Mapping[str, Any]) -> str:
    """Return a stream record's sequence number (its ``itemIdentifier``)."""
    number: str = record["dynamodb"]["SequenceNumber"]
    return number


def _aggregate_of(record: Mapping[str, Any]) -> str | None:
    keys = record.get("dynamodb", {}).get("Keys") or record.get("dynamodb", {}).get(
        "NewImage", {}
    )
    value = keys.get(store_schema.AGGREGATE_ID, {}).get("S")
    return None if value is None else str(value)


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
    records = event.get("Records", [])
    if events_table is not None:
        records = from_table(records, events_table, stream_arn)
    failed = process_records(
        projector, records, mapper, application_name=application_name
    )
    return {"batchItemFailures": [{"itemIdentifier": number} for number in failed]}


def stream_arn_of(application: Any) -> str | None:
    """Return the ARN of the application's events-table stream (None: none)."""
    recorder = application.recorder
    table = recorder.connection.call(
        "describe_table", TableName=recorder.events_table_name
    )["Table"]
    arn: str | None = table.get("LatestStreamArn")
    return arn


def from_table(
    records: Sequence[Mapping[str, Any]],
    events_table: str,
    stream_arn: str | None = None,
) -> list[Mapping[str, Any]]:
    """Return the records that come from ``events_table``'s stream.

    With ``stream_arn`` (the table's ``LatestStreamArn``), a record's
    ``eventSourceARN`` must be exactly it (same account, region, table and
    stream); without, it must name the table's stream. A record from any
    other source (another table's or account's stream wired to the function
    by mistake, or made up by an invoker) is dropped, never applied, and
    logged (its source and the count, not its content). Dropped records are
    not reported as failures: redelivering them would not help. (Only the
    event source mapping should be allowed to invoke the function: IAM, not
    this check, keeps out an invoker who copies the real ARN.)
    """

    def ours(record: Mapping[str, Any]) -> bool:
        source = str(record.get("eventSourceARN", ""))
        if stream_arn is not None:
            return source == stream_arn
        return f":table/{events_table}/stream/" in source

    own = [r for r in records if ours(r)]
    if len(own) < len(records):
        foreign = [r for r in records if not ours(r)]
        logger.error(
            "dropped stream records not from the events table",
            extra={
                "events_table": events_table,
                "dropped": len(foreign),
                "sources": sorted({str(r.get("eventSourceARN")) for r in foreign}),
            },
        )
    return own


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

    made: dict[str, Any] = {}

    def handler(
        event: Mapping[str, Any], context: Any
    ) -> dict[str, list[dict[str, str]]]:
        if not made:
            application = application_class(env=env)
            view = open_view(projector_class, env)
            made["mapper"] = application.mapper
            made["application_name"] = application.name
            made["events_table"] = application.recorder.events_table_name
            made["stream_arn"] = stream_arn_of(application)
            made["projector"] = projector_class(
                view,
                event_loader(application),
                metrics=metrics_from_env(projector_class, env),
            )
        return _while_time_allows(
            lambda: handle_stream_event(
                event,
                made["projector"],
                made["mapper"],
                events_table=made["events_table"],
                stream_arn=made["stream_arn"],
                application_name=made["application_name"],
            ),
            event,
            context,
        )

    return handler


_LAMBDA_MARGIN_MS = 5_000
"""Time kept back from a Lambda invocation's limit to answer in."""


def _while_time_allows(
    handle: Callable[[], dict[str, list[dict[str, str]]]],
    event: Mapping[str, Any],
    context: Any,
) -> dict[str, list[dict[str, str]]]:
    """Handle a batch, waiting out DynamoDB being unavailable while time allows.

    On ``OperationalError`` (an outage, throttling past the client's
    retries) the batch is tried again after a wait, doubling up to 30 s, for
    as long as the invocation has time (``context``'s remaining time, less a
    margin); then every record is reported failed, and Lambda delivers the
    batch again (each redelivery counts towards the mapping's
    ``MaximumRetryAttempts``). Nothing is lost or applied twice either way.
    """
    outage = Outage("handling a stream batch", 0.2)
    while True:
        try:
            return handle()
        except OperationalError as error:
            remaining_ms = (
                context.get_remaining_time_in_millis()
                if hasattr(context, "get_remaining_time_in_millis")
                else 0
            )
            # Wait only while the invocation has time left for another try.
            outage.patience = outage.waited + (remaining_ms - _LAMBDA_MARGIN_MS) / 1000
            wait = outage.failed(error)
            if wait is None:
                logger.error(  # noqa: TRY400 - the outage's waits were logged
                    "DynamoDB unavailable for the invocation's time: every record "
                    "of the stream batch reported failed",
                    extra={"records": len(event.get("Records", []))},
                )
                return {
                    "batchItemFailures": [
                        {"itemIdentifier": sequence_number(record)}
                        for record in event.get("Records", [])
                    ]
                }
            time.sleep(wait)


class StreamConsumer(Protocol):
    """What a :class:`StreamPoller` feeds: processes records, keeps checkpoints."""

    @property
    def connection(self) -> Any:
        """The DynamoDB connection of the store the consumer writes to."""
        ...  # pragma: no cover

    def process(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Process records of one shard in order; return the failed sequence numbers.

        Failed records (and those after them) are read again at the next poll.
        """
        ...  # pragma: no cover

    def checkpoint(self, shard_id: str) -> str | None:
        """Return the sequence number of the last record processed in a shard."""
        ...  # pragma: no cover

    def save_checkpoint(self, shard_id: str, number: str) -> None:
        """Record the last record processed in a shard."""
        ...  # pragma: no cover


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


class StreamPoller:
    """Feeds a projector (or any :class:`StreamConsumer`) from the events stream.

    For running a stream feed without Lambda (``ledger projections run``) and
    for DynamoDB Local. Each shard's last processed record is checkpointed
    after each batch (a projector keeps them in its control table); a record
    whose processing failed (DynamoDB unavailable, say) is read again at the
    next poll. Costs per poll: one DescribeStream, one GetShardIterator and at
    least one GetRecords per shard.
    """

    def __init__(
        self,
        consumer: Projector | StreamConsumer,
        application: Any,
        *,
        batch_size: int = 1000,
        streams_client: Any = None,
    ) -> None:
        if isinstance(consumer, Projector):
            consumer = ProjectionConsumer(
                consumer, application.mapper, application_name=application.name
            )
        self.consumer: StreamConsumer = consumer
        self.application = application
        self.batch_size = batch_size
        connection = consumer.connection
        self.client = streams_client or _streams_client(connection)
        events_table = application.recorder.events_table_name
        table = connection.call("describe_table", TableName=events_table)["Table"]
        if not table.get("StreamSpecification", {}).get("StreamEnabled"):
            raise ProgrammingError(
                f"The events table {events_table} has no DynamoDB stream (made "
                "with DYNAMODB_EVENTS_STREAM=no, say). Enable a stream of new "
                "images on it, or feed the projection from the application "
                "sequence (ledger projections run NAME --feed sequence)."
            )
        self.stream_arn: str = table["LatestStreamArn"]
        self._iterators: dict[str, str] = {}
        """Per shard, where the last poll's empty page left off."""
        self._finished: set[str] = set()
        """Shards closed and read to their end by this poller."""

    def poll(self) -> int:
        """Process every record available now in every shard; return how many."""
        processed = 0
        for shard in self._shards():
            processed += self._poll_shard(shard)
        return processed

    def run(
        self,
        stop: threading.Event,
        interval: float = 1.0,
        *,
        max_backoff: float = MAX_OUTAGE_WAIT,
    ) -> None:
        """Poll until ``stop`` is set, waiting ``interval`` seconds when idle.

        Rides out DynamoDB being unavailable (see :func:`run_polls`).
        """
        run_polls(self.poll, stop, interval=interval, max_backoff=max_backoff)

    def _shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        params: dict[str, Any] = {"StreamArn": self.stream_arn}
        while True:
            with translate_errors():
                description = self.client.describe_stream(**params)["StreamDescription"]
            shards.extend(description["Shards"])
            last = description.get("LastEvaluatedShardId")
            if last is None:
                return _parents_first(shards)
            params["ExclusiveStartShardId"] = last

    def backlog(self, cap: int = 10_000) -> int | None:
        """Count the records after the consumer's checkpoints, up to ``cap``.

        None if no shard has a checkpoint (the feed never ran here: a Lambda
        feed keeps its position itself; watch its iterator age instead).
        Costs a DescribeStream, and per shard a GetShardIterator and a
        GetRecords per 1,000 records counted.
        """
        shards = self._shards()
        if all(self.consumer.checkpoint(shard["ShardId"]) is None for shard in shards):
            return None
        behind = 0
        for shard in shards:
            if self._read_to_its_end(shard):
                continue
            iterator = self._iterator(shard["ShardId"])
            while iterator and behind < cap:
                response = self._get_records(
                    shard["ShardId"], iterator, min(1000, cap - behind)
                )
                records = response.get("Records", [])
                if not records:
                    break
                behind += len(records)
                iterator = response.get("NextShardIterator")
        return min(behind, cap)

    def _iterator(self, shard_id: str) -> str | None:
        """Return a shard iterator just after the consumer's checkpoint."""
        checkpoint = self.consumer.checkpoint(shard_id)
        params: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard_id}
        if checkpoint is None:
            params["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            params["SequenceNumber"] = checkpoint
        with translate_errors():
            iterator: str | None = self.client.get_shard_iterator(**params).get(
                "ShardIterator"
            )
        return iterator

    def _poll_shard(self, shard: Mapping[str, Any]) -> int:
        """Process a shard's available records; return how many.

        Where an empty page stopped it, the next poll goes on from there (a
        shard may hold empty stretches before later records); from the
        checkpoint again after a failure, or once the iterator was refused.
        """
        shard_id: str = shard["ShardId"]
        if shard_id in self._finished or self._read_to_its_end(shard):
            self._finished.add(shard_id)
            return 0
        iterator = self._iterators.pop(shard_id, None) or self._iterator(shard_id)
        processed = 0
        while iterator:
            response = self._get_records(shard_id, iterator)
            records = response.get("Records", [])
            if not records:
                following = response.get("NextShardIterator")
                if following is None:
                    self._finished.add(shard_id)  # closed, and read to its end
                else:
                    self._iterators[shard_id] = following
                return processed
            failed = set(self.consumer.process(records))
            done = _before_first_failure(records, failed)
            processed += len(done)
            if done:
                self.consumer.save_checkpoint(shard_id, sequence_number(done[-1]))
            if failed:
                return processed
            iterator = response.get("NextShardIterator")
        self._finished.add(shard_id)
        return processed

    def _read_to_its_end(self, shard: Mapping[str, Any]) -> bool:
        """Whether the shard is closed and its checkpoint is its last record.

        Such a shard is not read again: once its records pass the stream's 24
        hours, an iterator after its checkpoint is refused as trimmed,
        although nothing is missing. (A GetItem of the checkpoint, only for
        closed shards this poller has not finished.)
        """
        ending = shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
        if ending is None:
            return False
        checkpoint = self.consumer.checkpoint(shard["ShardId"])
        return checkpoint is not None and int(checkpoint) >= int(ending)

    def _get_records(
        self, shard_id: str, iterator: str, limit: int | None = None
    ) -> dict[str, Any]:
        """Read a page of a shard; renew a refused iterator from the checkpoint.

        An iterator refused as expired or as trimmed is renewed from the
        checkpoint as it stands now, and read once more: a refusal as trimmed
        does not yet mean records after the checkpoint are gone. DynamoDB
        Streams refuses an iterator whose record passed its 24 hours after
        the iterator was issued (the checkpoint, which another worker may have
        moved on meanwhile, can be later); DynamoDB Local refuses one taken
        while the shard was empty, once records arrive. Only if the renewed
        iterator is refused too (or GetShardIterator refuses the checkpoint)
        is the error, which says to rebuild, raised.
        """
        limit = limit or self.batch_size
        try:
            response: dict[str, Any] = self.client.get_records(
                ShardIterator=iterator, Limit=limit
            )
        except botocore.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code not in _RENEWABLE:
                raise translate_client_error(error) from error
        except botocore.exceptions.BotoCoreError:
            with translate_errors():
                raise
        else:
            return response
        renewed = self._iterator(shard_id)
        if renewed is None:
            return {"Records": []}
        with translate_errors():
            return cast(
                "dict[str, Any]",
                self.client.get_records(ShardIterator=renewed, Limit=limit),
            )


_RENEWABLE = ("ExpiredIteratorException", "TrimmedDataAccessException")
"""GetRecords refusals of an iterator that one renewed from the checkpoint
may not meet (see :meth:`StreamPoller._get_records`)."""


def _before_first_failure(
    records: Sequence[Mapping[str, Any]], failed: set[str]
) -> list[Mapping[str, Any]]:
    done: list[Mapping[str, Any]] = []
    for record in records:
        if sequence_number(record) in failed:
            break
        done.append(record)
    return done


def _parents_first(shards: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    # A child shard's records come after its parent's: process parents first.
    ordered: list[dict[str, Any]] = []
    remaining = list(shards)
    known = {shard["ShardId"] for shard in remaining}
    placed: set[str] = set()
    while remaining:
        progress = False
        for shard in list(remaining):
            parent = shard.get("ParentShardId")
            if parent is None or parent not in known or parent in placed:
                ordered.append(shard)
                placed.add(shard["ShardId"])
                remaining.remove(shard)
                progress = True
        if not progress:
            ordered.extend(remaining)
            break
    return ordered


def run_polls(
    poll: Callable[[], int],
    stop: threading.Event,
    *,
    interval: float = 1.0,
    max_backoff: float = MAX_OUTAGE_WAIT,
    on_unavailable: Callable[[Exception, float], None] | None = None,
) -> None:
    """Call ``poll`` until ``stop`` is set; wait ``interval`` when it found nothing.

    When DynamoDB is unavailable (``OperationalError`` after the client's own
    retries: an outage, throttling that outlasts them), wait and poll again,
    doubling the wait up to ``max_backoff``, for as long as it takes: nothing
    is lost, since a poll commits nothing it did not apply and checkpoints
    only what it committed. ``on_unavailable(error, wait)`` is told each time.
    """
    outage = Outage(
        "polling", interval, longest=max_backoff, on_unavailable=on_unavailable
    )
    while not stop.is_set():
        try:
            processed = poll()
        except OperationalError as error:
            stop.wait(outage.failed(error))
            continue
        outage.recovered()
        if processed == 0:
            stop.wait(interval)


def _streams_client(connection: Any) -> Any:
    # Made by the connection, so it shares its settings and answer checks.
    return connection.streams_client()
