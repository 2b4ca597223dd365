"""Reading an events table's DynamoDB stream: batches, a poller, a Lambda handler.

(Over 400 lines as one concept: the poller and the Lambda handler share the
records' rules below.)

The stream holds each event once it is saved, in order per item (so per
aggregate) only, for 24 hours, and delivers at least once. A consumer of it
is a consumer of the reader interface, fed :class:`~ledger.feeds.Batch`es
(:class:`StreamSource`: one shard's records a batch, each new event an
:class:`~ledger.feeds.Item` whose position is its record's sequence number,
a decimal integer that grows within a shard) and answering
:class:`~ledger.feeds.Progress`: a position short of the batch's checkpoint
says the record after it failed, and everything from that record on is read
again. Positions are of two shapes: a sequence number per shard (where the
:class:`StreamPoller` goes on from: a :class:`ShardConsumer`'s
:attr:`~ShardConsumer.shard_checkpoints`), and what the consumer applied per
aggregate (its own: a projector's aggregate positions, a follower's
tracking), which makes a record delivered twice, or out of order across
aggregates, harmless.

Records reach a consumer in one of two ways, as batches either way:

* the :class:`StreamPoller` reads every shard (parents first) after its
  checkpoint, and is run as every feed is (:class:`~ledger.feeds.Polling`:
  ``run``, ``drain``, ``start``/``stop``);
* in Lambda, an event source mapping pushes them:
  :func:`stream_handler` makes a handler answering Lambda's partial-batch
  response (``batchItemFailures``: every record from the first not done on)
  and waiting out DynamoDB being unavailable while the invocation has time.

Only the indexer (``indexed`` ordering) and the legacy stream feed (the
``stream`` ordering's projections, followers and publisher) read the stream;
every other consumer reads the index (:class:`~ledger.feeds.Runner`).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, cast
from uuid import UUID

import botocore.exceptions
from eventsourcing.persistence import (
    DataError,
    Mapper,
    Notification,
    OperationalError,
    ProgrammingError,
)

from ledger.dynamodb import schema as store_schema
from ledger.dynamodb.client import (
    Outage,
    translate_client_error,
    translate_errors,
)
from ledger.feeds.base import Batch, Item, Progress, Raced
from ledger.feeds.polling import Polling, StoppedShortError, deadline_of, keep_polling
from ledger.projections.deadletters import error_summary
from ledger.projections.history import Undecodable

if TYPE_CHECKING:
    from ledger.projections.projector import Projector
logger = logging.getLogger(__name__)
"""Structured records (``extra=``): sources, counts; never event state."""

INSERT = "INSERT"
"""The only stream records projected: events are never modified or removed."""

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
    ``dynamodbstreams`` client's (binary as bytes). Raises ``DataError`` for
    a new image that is not a whole event.
    """
    if record.get("eventName") != INSERT:
        return None
    number = record.get("dynamodb", {}).get("SequenceNumber")
    position = int(number) if number else 0
    return mapper.to_domain_event(_notification(record, position, uuid_ids=uuid_ids))


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


@dataclass(frozen=True, eq=False)
class StreamItem(Item):
    """One new event as the stream hands it over, at its record's position.

    Its notification is made from the record's new image, with the record's
    sequence number as its ``id``; an image that is not a whole event
    decodes to an :class:`~ledger.projections.history.Undecodable`.
    """

    sequence_number: str = ""
    """The record's sequence number as the stream spells it (what a
    checkpoint and a partial-batch response hold)."""
    record: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The stream record itself (its approximate creation time, its keys)."""

    @property
    def aggregate_id(self) -> str | None:
        """The id of the aggregate the record is of, as stored (None: not said)."""
        return _aggregate_of(self.record)


class StreamSource:
    """An events table's stream as batches of the reader interface, a shard's each.

    Only new events (``INSERT`` records) become items; a batch's checkpoint
    is its last record's sequence number all the same, so records of any
    other kind are passed over, as an index batch passes over other topics.
    It makes batches of records read elsewhere (by the :class:`StreamPoller`
    from each shard, or pushed by Lambda), so it is no
    :class:`~ledger.feeds.Source`: a stream has no one position to read after.
    """

    def __init__(self, mapper: Mapper[Any], *, uuid_ids: bool = True) -> None:
        """Decode with ``mapper``; aggregate ids are UUIDs unless ``uuid_ids``."""
        self.mapper = mapper
        self.uuid_ids = uuid_ids

    @classmethod
    def of(cls, application: Any) -> StreamSource:
        """Return the source of ``application``'s events table's stream."""
        uuid_ids = getattr(application.recorder, "originator_id_type", "uuid") == "uuid"
        return cls(application.mapper, uuid_ids=uuid_ids)

    def batch(self, records: Sequence[Mapping[str, Any]]) -> Batch:
        """Return one shard's records, in the shard's order, as a batch.

        Its ``after`` is the position before its first record, its
        checkpoint and head its last record's (a shard has no head to read).
        Numbers compare as integers: a shard's grow, whatever their length.
        """
        items = [
            item
            for item in (self.item(record) for record in records)
            if item is not None
        ]
        # In a shard's order the last is the highest; as a max, a batch put
        # together out of order (a redelivery) is past all of its records.
        numbers = [int(sequence_number(record)) for record in records] or [0]
        return Batch(items, max(0, min(numbers) - 1), max(numbers), max(numbers))

    def item(self, record: Mapping[str, Any]) -> StreamItem | None:
        """Return a record's item (None: no new event)."""
        if record.get("eventName") != INSERT:
            return None
        number = sequence_number(record)
        image = record.get("dynamodb", {}).get("NewImage", {})
        try:
            notification = _notification(record, int(number), uuid_ids=self.uuid_ids)
        except (DataError, ValueError) as error:
            return StreamItem(
                _partial_notification(image, int(number)),
                _undecodable(error),
                sequence_number=number,
                record=record,
            )
        return StreamItem(
            notification, self._decode, sequence_number=number, record=record
        )

    def _decode(self, notification: Any) -> Any:
        try:
            return self.mapper.to_domain_event(notification)
        except Exception as error:  # noqa: BLE001 - any decoding failure is the consumer's to park
            return Undecodable(
                str(notification.originator_id),
                notification.originator_version,
                notification.topic,
                error_summary(error, " while decoding the stream record"),
            )


def _notification(
    record: Mapping[str, Any], position: int, *, uuid_ids: bool
) -> Notification:
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
    return Notification(
        originator_id=UUID(aggregate_id) if uuid_ids else aggregate_id,
        originator_version=int(image[store_schema.VERSION]["N"]),
        topic=image[store_schema.TOPIC]["S"],
        state=bytes(state),
        id=position,
    )


def _partial_notification(image: Mapping[str, Any], position: int) -> Notification:
    """Return what can be read of an image that is not a whole event."""
    version = str(image.get(store_schema.VERSION, {}).get("N", ""))
    return Notification(
        originator_id=str(image.get(store_schema.AGGREGATE_ID, {}).get("S", "")),
        originator_version=int(version) if version.isdigit() else 0,
        topic=str(image.get(store_schema.TOPIC, {}).get("S", "")),
        state=b"",
        id=position,
    )


def _undecodable(error: Exception) -> Callable[[Any], Any]:
    reason = error_summary(error, " while decoding the stream record")

    def to_event(notification: Any) -> Any:
        return Undecodable(
            str(notification.originator_id),
            notification.originator_version,
            notification.topic,
            reason,
        )

    return to_event


def done_up_to(records: Sequence[Mapping[str, Any]], position: int) -> str | None:
    """Return the sequence number of the last record at or before ``position``.

    The records are read in order and the first one past ``position`` ends
    them: what follows it is read again whatever its number. None: not one.
    """
    last: str | None = None
    for record in records:
        number = sequence_number(record)
        if int(number) > position:
            break
        last = number
    return last


def not_done(records: Sequence[Mapping[str, Any]], position: int) -> list[str]:
    """Return the sequence numbers of the records from the first past ``position``."""
    done = done_up_to(records, position)
    count = 0 if done is None else _index_of(records, done) + 1
    return [sequence_number(record) for record in records[count:]]


def _index_of(records: Sequence[Mapping[str, Any]], number: str) -> int:
    return next(i for i, r in enumerate(records) if sequence_number(r) == number)


def progress_before(batch: Batch, failed: Iterable[str], applied: int) -> Progress:
    """Return a stream consumer's progress: before the first of ``failed``, if any.

    ``failed`` are the sequence numbers of the records it did not finish; a
    batch with none is done to its checkpoint.
    """
    first = min((int(number) for number in failed), default=None)
    return Progress(applied, batch.checkpoint if first is None else first - 1)


def progress_of(consumer: BatchHandler, batch: Batch) -> Progress | None:
    """Hand ``batch`` to ``consumer``; return its progress, None if it raced.

    A consumer that raced committed nothing past what its own positions
    say: the batch is handed over again, in full.
    """
    try:
        return consumer.process(batch)
    except Raced:
        logger.info(
            "%s: another writer got in first; the stream records are read again",
            consumer.name,
            extra={"consumer": consumer.name},
        )
        return None


def feed_records(
    consumer: BatchHandler,
    records: Sequence[Mapping[str, Any]],
    source: StreamSource,
) -> list[str]:
    """Hand one shard's records to ``consumer`` as a batch; return those not done.

    The sequence numbers of every record from the first not done on (all of
    them if the consumer raced): what Lambda's partial-batch response names
    and what a poller reads again.
    """
    if not records:
        return []
    progress = progress_of(consumer, source.batch(records))
    if progress is None:
        return [sequence_number(record) for record in records]
    return not_done(records, progress.position)


class ShardCheckpoints(Protocol):
    """A stream consumer's positions, one per shard, for the :class:`StreamPoller`.

    Each is the sequence number of the last record done in the shard, kept
    as the stream spells it (DynamoDB Local pads them with zeros).
    """

    @property
    def connection(self) -> Any:
        """The DynamoDB connection of the store the positions are kept in."""
        ...  # pragma: no cover

    def checkpoint(self, shard_id: str) -> str | None:
        """Return the sequence number of the last record done in a shard."""
        ...  # pragma: no cover

    def save_checkpoint(self, shard_id: str, number: str) -> None:
        """Record the last record done in a shard."""
        ...  # pragma: no cover


class BatchHandler(Protocol):
    """A consumer fed stream batches: :class:`~ledger.feeds.Consumer`'s ``process``.

    What the Lambda handler needs; the :class:`StreamPoller` also needs a
    :class:`ShardConsumer`'s checkpoints. A consumer of the index whose
    process does not commit a position of its own (``atomic`` false: the
    runner saves its checkpoint) can be one as it is. An atomic one cannot:
    it commits one position of a total order with its effects (a projector's
    tracking, a saga's), and a stream batch's positions are one shard's
    sequence numbers, redelivered at least once. A stream consumer keeps its
    own per-aggregate positions instead, since the stream orders records
    per aggregate only.
    """

    @property
    def name(self) -> str:
        """For logs and metrics."""
        ...  # pragma: no cover

    def process(self, batch: Batch) -> Progress:
        """Handle a batch (one shard's records); say how far it got."""
        ...  # pragma: no cover


class ShardConsumer(BatchHandler, Protocol):
    """A stream consumer a :class:`StreamPoller` can feed: a position per shard."""

    @property
    def shard_checkpoints(self) -> ShardCheckpoints:
        """Where it keeps its position in each shard."""
        ...  # pragma: no cover


class StreamPoller(Polling):
    """Feeds a projector (or any :class:`ShardConsumer`) from the events stream.

    For running a stream feed without Lambda (``ledger projections run``) and
    for DynamoDB Local. Each page of a shard is handed over as a batch
    (:class:`StreamSource`); the shard's checkpoint then moves to the last
    record before the consumer's position (a projector keeps them in its
    control table), and a record it did not finish (DynamoDB unavailable,
    say) is read again, with every later one of its shard, at the next
    poll. Costs per poll: one DescribeStream, one GetShardIterator and at
    least one GetRecords per shard. It runs, drains (starting no page after
    the deadline), starts and stops as every feed that polls does
    (:class:`~ledger.feeds.Polling`).
    """

    def __init__(
        self,
        consumer: Projector | ShardConsumer | ShardCheckpoints,
        application: Any,
        *,
        batch_size: int = 1000,
        streams_client: Any = None,
        interval: float = 1.0,
    ) -> None:
        """Feed ``consumer`` from ``application``'s events stream.

        A projector is fed as a :class:`~ledger.projections.streams.ProjectionConsumer`.
        Given only shard checkpoints (a subclass that reads shards itself, or
        :meth:`backlog` alone), it feeds nothing. ``batch_size`` records are
        read per GetRecords; ``interval`` seconds are waited after a poll
        that found nothing.
        """
        super().__init__(interval=interval)
        # Imported here: ledger.projections.streams imports this module.
        from ledger.projections.projector import Projector  # noqa: PLC0415
        from ledger.projections.streams import ProjectionConsumer  # noqa: PLC0415

        if isinstance(consumer, Projector):
            consumer = ProjectionConsumer(
                consumer, application.mapper, application_name=application.name
            )
        self.fed: ShardConsumer | None = None
        """The consumer fed (None: only its checkpoints were given)."""
        self.consumer: ShardCheckpoints
        """Its positions per shard (where the shard helpers read them)."""
        if hasattr(consumer, "shard_checkpoints"):
            self.fed = cast("ShardConsumer", consumer)
            self.consumer = self.fed.shard_checkpoints
        else:
            self.consumer = consumer
        self.application = application
        self.batch_size = batch_size
        connection = self.consumer.connection
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
        self._source: StreamSource | None = None
        self._iterators: dict[str, str] = {}
        """Per shard, where the last poll's empty page left off."""
        self._finished: set[str] = set()
        """Shards closed and read to their end by this poller."""
        self._deadline: float | None = None
        """When the drain under way must end: no page is read after it."""
        self._failed_shards: list[str] = []
        """Shards where the poll under way stopped at records the consumer failed."""

    @property
    def source(self) -> StreamSource:
        """The application's stream as batches (made when first read)."""
        if self._source is None:
            self._source = StreamSource.of(self.application)
        return self._source

    @property
    def name(self) -> str:
        """The consumer's name, or else the stream's, for logs and the thread."""
        name = getattr(self.fed, "name", None)
        if name is None:
            return f"{self.application.recorder.events_table_name} stream"
        return str(name)

    def poll(self) -> int:
        """Process every record available now in every shard; return how many."""
        processed = 0
        for shard in self._shards():
            if self._past_deadline():
                break
            processed += self._poll_shard(shard)
        return processed

    def _poll_within(self, deadline: float | None) -> int:
        # Through an attribute, not an argument: a subclass's own poll (the
        # indexer's rounds) is then still the one drained, whole.
        self._deadline = deadline
        self._failed_shards = []
        try:
            processed = self.poll()
        finally:
            self._deadline = None
        if self._failed_shards:
            # The consumer failed records (its own writes refused while
            # DynamoDB is unavailable, say): not caught up, whatever the
            # count. Wait as for an outage, then read them again.
            raise StoppedShortError(
                f"{self.name}: the consumer failed records of shard"
                f"{'s' if len(self._failed_shards) > 1 else ''} "
                f"{', '.join(self._failed_shards)} (it logged why); they are "
                "read again from the checkpoint at the next poll.",
                processed,
            )
        return processed

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

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
        """Hand a shard's available records over; return how many were done.

        Where an empty page stopped it, the next poll goes on from there (a
        shard may hold empty stretches before later records); from the
        checkpoint again after a failure, or once the iterator was refused.
        """
        shard_id: str = shard["ShardId"]
        if shard_id in self._finished or self._read_to_its_end(shard):
            self._finished.add(shard_id)
            return 0
        if self.fed is None:
            raise ProgrammingError(
                f"{self.name}: this poller was given shard checkpoints only, and "
                "has no consumer to feed. Give StreamPoller a projector or a "
                "consumer fed batches: process(batch) -> Progress, with its "
                "positions per shard as shard_checkpoints (see ledger.feeds)."
            )
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
            batch = self.source.batch(records)
            progress = progress_of(self.fed, batch)
            done = None if progress is None else done_up_to(records, progress.position)
            if done is not None:
                processed += _index_of(records, done) + 1
                self.consumer.save_checkpoint(shard_id, done)
            failed = progress is None or progress.position < batch.checkpoint
            if failed:
                self._failed_shards.append(shard_id)
            if failed or self._past_deadline():
                # The next poll goes on from the checkpoint.
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


def _streams_client(connection: Any) -> Any:
    # Made by the connection, so it shares its settings and answer checks.
    return connection.streams_client()


# --- AWS Lambda --------------------------------------------------------------------

LAMBDA_MARGIN_MS: Final = 5_000
"""Time kept back from a Lambda invocation's limit to answer in."""
FIRST_OUTAGE_WAIT: Final = 0.2
"""Seconds a Lambda batch waits after DynamoDB first failed (then doubling)."""

BatchResponse = dict[str, list[dict[str, str]]]
"""Lambda's partial-batch response (``batchItemFailures``: the failed records)."""


def partial_batch_response(failed: Iterable[str]) -> BatchResponse:
    """Return Lambda's partial-batch response naming the records that failed."""
    return {"batchItemFailures": [{"itemIdentifier": number} for number in failed]}


def handle_records(
    event: Mapping[str, Any],
    consumer: BatchHandler,
    source: StreamSource,
    *,
    events_table: str | None = None,
    stream_arn: str | None = None,
) -> BatchResponse:
    """Hand a Lambda stream event over once; return its partial-batch response.

    The event's records (one shard's, in order) are one batch of ``source``.
    With ``events_table`` (and its ``stream_arn``), only records from that
    table's stream are handed over (:func:`from_table`). Every record from
    the first the consumer did not finish on is reported: Lambda delivers
    the shard again from the first reported anyway.
    """
    records = event.get("Records", [])
    if events_table is not None:
        records = from_table(records, events_table, stream_arn)
    return partial_batch_response(feed_records(consumer, records, source))


def handle_while_time_allows(
    event: Mapping[str, Any],
    consumer: BatchHandler,
    source: StreamSource,
    *,
    deadline: float | None,
    events_table: str | None = None,
    stream_arn: str | None = None,
) -> BatchResponse:
    """Hand a Lambda stream event over, waiting out DynamoDB being unavailable.

    On ``OperationalError`` (an outage, throttling past the client's
    retries) the batch is handed over again after a wait, doubling from
    :data:`FIRST_OUTAGE_WAIT` up to 30 s, while the wait ends before
    ``deadline`` (a ``time.monotonic()``; None: no wait); then every record
    of the event is reported failed, and Lambda delivers the batch again
    (each redelivery counts towards the mapping's ``MaximumRetryAttempts``).
    Nothing is lost or applied twice either way.
    """
    answer: list[BatchResponse] = []

    def handle() -> int:
        answer.append(
            handle_records(
                event,
                consumer,
                source,
                events_table=events_table,
                stream_arn=stream_arn,
            )
        )
        return 0  # handled: no second try

    outage = Outage("handling a stream batch", FIRST_OUTAGE_WAIT)
    with contextlib.suppress(OperationalError):  # out of time: reported below
        keep_polling(
            handle, outage, deadline=time.monotonic() if deadline is None else deadline
        )
    if answer:
        return answer[0]
    logger.error(
        "DynamoDB unavailable for the invocation's time: every record "
        "of the stream batch reported failed",
        extra={"records": len(event.get("Records", []))},
    )
    return partial_batch_response(
        sequence_number(record) for record in event.get("Records", [])
    )


def stream_handler(
    make: Callable[[], tuple[BatchHandler, Any]],
    *,
    margin_ms: float = LAMBDA_MARGIN_MS,
) -> Callable[[Mapping[str, Any], Any], BatchResponse]:
    """Return a Lambda handler feeding pushed stream records to a consumer.

    ``make()`` returns the consumer and the application whose events table's
    stream the records come from; it is called at the first invocation (and
    again at the next one if it raised), and what it made is kept while
    Lambda keeps the process warm. Each invocation hands the records of
    that stream (:func:`from_table`) to the consumer as one batch
    (:class:`StreamSource`) and answers the partial-batch response
    (configure the event source mapping with ``ReportBatchItemFailures``):
    every record from the first not done on. While DynamoDB is unavailable
    it waits and tries again until the invocation's remaining time is under
    ``margin_ms``, then reports every record failed
    (:func:`handle_while_time_allows`); without a context it does not wait.
    """
    made: list[tuple[BatchHandler, StreamSource, str, str | None]] = []

    def handler(event: Mapping[str, Any], context: Any) -> BatchResponse:
        if not made:
            consumer, application = make()
            events_table: str = application.recorder.events_table_name
            made.append(
                (
                    consumer,
                    StreamSource.of(application),
                    events_table,
                    stream_arn_of(application),
                )
            )
        consumer, source, events_table, stream_arn = made[0]
        return handle_while_time_allows(
            event,
            consumer,
            source,
            deadline=deadline_of(context, margin_ms),
            events_table=events_table,
            stream_arn=stream_arn,
        )

    return handler
