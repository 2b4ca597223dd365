"""Feeding ``eventsourcing`` process applications from a leader's events stream.

With ``DYNAMODB_ORDERING=stream`` there are no notification ids for
``eventsourcing``'s followers to track, so a follower fed by the stream tracks
the last version processed *per leader aggregate*
(:func:`ledger.dynamodb.aggregate_tracking`). The follower's stream process
recorder writes that tracking in the same transaction as the events its
policy made, so each leader event is processed exactly once: a repeated
delivery is skipped, and if the follower crashed after committing, the
redelivery finds the tracking and does nothing. A record that arrives after a
gap (earlier versions of its aggregate not yet processed) has the missing
events read from the leader's events table and processed first, so a
policy always sees an aggregate's events in version order; if one of them
cannot be read (not replicated yet, or removed), the record fails with
:class:`~ledger.projections.models.GapError` and is delivered again, never
passed over. Aggregates interleave in any order.

A :class:`StreamFollower` is a consumer of the stream fed batches
(:class:`~ledger.feeds.StreamSource`). Use it from Lambda with
:meth:`StreamFollower.handle` (the partial-batch response, through
:func:`~ledger.feeds.stream_handler`), or locally with
:class:`~ledger.feeds.StreamPoller` (it keeps each shard's checkpoint in the
follower's tracking table: :class:`TrackingShardCheckpoints`).
A record that fails is logged on ``ledger.projections.followers`` (its
error's type and place, never its message or the event's state).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.projection import EventSourcedProjection

from ledger.dynamodb import aggregate_tracking
from ledger.dynamodb import schema as store_schema
from ledger.feeds.base import Batch, Progress
from ledger.feeds.stream import (
    BatchResponse,
    StreamItem,
    decode_record,
    progress_before,
    stream_handler,
)
from ledger.projections.gaps import in_version_order
from ledger.projections.metrics import report_records_failed

logger = logging.getLogger(__name__)

_FOLLOWER_GAP_ADVICE = (
    "Nothing was skipped: the record fails, with its aggregate's later records, "
    "and is delivered again (the poller reads it again at its next poll; Lambda "
    "retries it up to the mapping's MaximumRetryAttempts, then hands its "
    "metadata to the on-failure destination). If the version is gone for good, "
    "this follower cannot go on with the aggregate."
)


class StreamFollower:
    """Processes a leader's stream records with an ``eventsourcing`` follower.

    ``follower`` is an ``EventSourcedProjection`` (a ``ProcessApplication``,
    say) whose recorder is ledger's stream process recorder; ``leader`` is
    the application whose events table the records come from.
    """

    def __init__(self, follower: EventSourcedProjection[Any], leader: Any) -> None:
        self.follower = follower
        self.leader = leader
        recorder: Any = follower.recorder
        self.recorder = recorder
        self.connection = recorder.connection
        self.name: str = follower.name
        """The follower's name (for logs)."""
        self.shard_checkpoints = TrackingShardCheckpoints(recorder, leader.name)
        """Its positions in the leader's stream (for the poller)."""
        self._handler: Callable[[Mapping[str, Any], Any], BatchResponse] | None = None
        """The Lambda handler of :meth:`handle`, made at the first event."""
        self._uuid_ids = (
            getattr(leader.recorder, "originator_id_type", "uuid") == "uuid"
        )

    # Processing ---------------------------------------------------------------

    def process(self, batch: Batch) -> Progress:
        """Process a batch (one shard's records) in order; say how far it got.

        A record that cannot be decoded or processed fails, and so do the
        later records of its aggregate in the batch (never out of order);
        records of other aggregates go on. The position stops before the
        first record that failed: it and what follows it are handed over
        again, and what was processed after it is then skipped (tracked).
        """
        failed: list[str] = []
        # ledger's own partial-batch logic, not Powertools' BatchProcessor: that
        # handles each stream record on its own, so it would run a command for an
        # aggregate's later event after an earlier one failed. Here a failed
        # record fails every later record of its aggregate in the batch.
        failed_aggregates: set[str | None] = set()
        processed = 0
        for item in cast("list[StreamItem]", list(batch.items)):
            number = item.sequence_number
            aggregate_id = item.aggregate_id
            if aggregate_id in failed_aggregates:
                failed.append(number)
                continue
            try:
                # Decoded here, not as the item: a failure is logged as itself.
                event = decode_record(
                    item.record, self.leader.mapper, uuid_ids=self._uuid_ids
                )
                if event is not None and self.process_event(event):
                    processed += 1
            except Exception as error:  # noqa: BLE001 - reported for the source to redeliver
                who = {"follower": self.follower.name, "leader": self.leader.name}
                report_records_failed(logger, who, [(number, aggregate_id)], error)
                failed.append(number)
                failed_aggregates.add(aggregate_id)
        return progress_before(batch, failed, processed)

    def handle(self, event: Mapping[str, Any]) -> BatchResponse:
        """Process a Lambda stream event; return its partial-batch response.

        Only records from the leader's events table are processed (others are
        dropped and logged: see :func:`~ledger.feeds.from_table`). A record
        that meets DynamoDB unavailable fails as any other (:meth:`process`),
        and is delivered again.
        """
        if self._handler is None:
            self._handler = stream_handler(lambda: (self, self.leader))
        return self._handler(event, None)

    def process_event(self, event: Any) -> bool:
        """Process one leader event exactly once; False if it was processed before."""
        version: int = event.originator_version
        done = self._processed(event.originator_id)
        if version <= done:
            return False
        if version > done + 1:
            for missing in self._leader_events(event.originator_id, done, version - 1):
                self._process_one(missing)
        self._process_one(event)
        return True

    def _leader_events(self, originator_id: Any, after: int, up_to: int) -> list[Any]:
        """Read a leader aggregate's versions after ``after`` up to ``up_to``.

        Raises :class:`GapError` if one of them cannot be read: the record
        fails (with its aggregate's later ones) and is delivered again.
        """
        stored = self.leader.recorder.select_events(originator_id, gt=after, lte=up_to)
        events = [self.leader.mapper.to_domain_event(s) for s in stored]
        return list(
            in_version_order(
                str(originator_id), events, after, up_to, advice=_FOLLOWER_GAP_ADVICE
            )
        )

    def _processed(self, originator_id: Any) -> int:
        name = aggregate_tracking(self.leader.name, originator_id, 0).application_name
        return int(self.recorder.max_tracking_id(name) or 0)

    def _process_one(self, event: Any) -> None:
        tracking: Tracking = aggregate_tracking(
            self.leader.name, event.originator_id, event.originator_version
        )
        try:
            self.follower.process_event(event, tracking)
        except IntegrityError:
            if self._processed(event.originator_id) >= event.originator_version:
                return  # another worker processed it meanwhile
            raise


class TrackingShardCheckpoints:
    """A follower's positions in its leader's stream: items of its tracking table.

    One item per shard, ``{leader}{SHARD_CHECKPOINT_MARK}{shard id}``,
    holding the sequence number of the last record done.
    """

    def __init__(self, recorder: Any, leader_name: str) -> None:
        """Keep the positions in ``leader_name``'s stream in ``recorder``'s table."""
        self.recorder = recorder
        self.connection = recorder.connection
        self.leader_name = leader_name

    def checkpoint(self, shard_id: str) -> str | None:
        """Return the last record processed in a shard (from the tracking table)."""
        response = self.connection.call(
            "get_item",
            TableName=self.recorder.tracking_table_name,
            Key={store_schema.APPLICATION_NAME: {"S": self._shard_key(shard_id)}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return None if item is None else str(item[store_schema.SEQUENCE_NUMBER]["S"])

    def save_checkpoint(self, shard_id: str, number: str) -> None:
        """Record the last record processed in a shard."""
        self.connection.call(
            "put_item",
            TableName=self.recorder.tracking_table_name,
            Item={
                store_schema.APPLICATION_NAME: {"S": self._shard_key(shard_id)},
                store_schema.SEQUENCE_NUMBER: {"S": number},
            },
        )

    def _shard_key(self, shard_id: str) -> str:
        return f"{self.leader_name}{store_schema.SHARD_CHECKPOINT_MARK}{shard_id}"
