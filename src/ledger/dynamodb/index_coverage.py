"""Whether an ``indexed`` application's indexer has indexed what was saved by a moment.

For going past a damaged index batch (``ledger projections skip-batch``):
its events are those of the events table in no readable batch, once every
event saved before the events table was scanned is indexed. Read here as the
indexer leaves it, without running one: its checkpoints item (one GetItem)
and, per shard of the events table's stream, what follows the shard's
checkpoint (a GetShardIterator and a GetRecords of one record, more past
empty pages). The indexer commits its checkpoints with the batches it
appends, in one transaction, so a head read after the checkpoints holds
every event up to them.

A shard the indexer holds a checkpoint for that the stream no longer lists,
and that the indexer did not record reading to its end (``ENDED_SHARDS``),
may have taken records the index lacks (the indexer re-indexes on seeing
one): the events in no readable batch then cannot be told from the batch's,
and the check refuses with ``DataError``. So it does when a listed shard has
no checkpoint (it is read from its oldest record, which is never refused as
trimmed) and the indexer last found such shards empty, or began a pass of a
re-index, more than the stream's retention ago: the indexer's own test
(:func:`ledger.reindexing.lapsed_unguarded`), for which it re-indexes too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import botocore.exceptions
import botocore.utils
from eventsourcing.persistence import DataError

from ledger.dynamodb import schema
from ledger.dynamodb.client import translate_client_error, translate_errors

if TYPE_CHECKING:  # the stubs are a development dependency only
    from ledger.dynamodb.indexed_recorders import DynamoDBIndexedApplicationRecorder

_EMPTY_PAGES: Final = 3
"""Empty pages read on past a checkpoint before an open shard counts as
empty: DynamoDB Streams may answer a few empty pages before a stretch of a
shard that holds records."""
POLL_INTERVAL: Final = 1.0
"""Seconds at least between two reads of a shard: DynamoDB Streams allows 5
GetRecords a second per shard, and the indexer reads it too."""

_RECORDS_READ: Final = 100
"""Records read per GetRecords: the first save after a checkpoint is looked
for past any deletions before it."""
_INSERT: Final = "INSERT"
"""A stream record's ``eventName`` for a new item: an event saved."""

_RENEWABLE: Final = frozenset(
    ("ExpiredIteratorException", "TrimmedDataAccessException")
)
"""Refusals of a shard iterator that a later check, with a new one, may not meet."""


class _RefusedError(Exception):
    """A shard iterator was refused as expired or trimmed."""


class Coverage(NamedTuple):
    """How far the indexer has got, against a moment."""

    pending: str | None
    """Why an event saved before the moment may not be indexed yet (None:
    every one is)."""
    revision: int | None
    """The checkpoints item's revision (one more per committed round; None:
    no round committed), to tell a stopped indexer from a slow one."""


class IndexCoverage:
    """Reads whether the indexer has indexed every event saved before a moment."""

    def __init__(self, recorder: DynamoDBIndexedApplicationRecorder) -> None:
        """Read ``recorder``'s index and its events table's stream."""
        self.recorder = recorder
        self._streams: Any = None
        self._stream_arn: str | None = None

    def since(self, moment: float) -> Coverage:
        """Return whether every stream record created before ``moment`` is indexed.

        ``moment``: epoch seconds, a clock margin later than the instant
        meant (the stream's times are DynamoDB's clock, rounded down to the
        second). A shard is covered when it is read to its checkpoint's end
        (closed), holds nothing after its checkpoint, or its first record
        after it was created after ``moment``. Not covered while a re-index
        from the events table is under way: its stream checkpoints say
        nothing of what it has read. Raises ``DataError`` if a checkpointed
        shard has left the stream unread to its end, or a shard without a
        checkpoint may have lost records unread (see the module's
        docstring).
        """
        recorder = self.recorder
        item = recorder.connection.call(
            "get_item",
            TableName=recorder.notifications_table_name,
            Key=schema.index_checkpoints_key(),
            ConsistentRead=True,
        ).get("Item")
        if item is None:
            return Coverage("no indexer has committed a round", None)
        revision = int(item[schema.REVISION]["N"])
        if schema.REINDEX_SCAN in item:
            return Coverage(
                "a re-index from the events table is under way, and it stops at "
                "a damaged batch: restore the batch (a backup of the "
                "notifications table), or rebuild the projection from the events "
                "table (ledger projections rebuild NAME --source scan)",
                revision,
            )
        checkpoints = {
            shard_id: value["S"]
            for shard_id, value in item[schema.SHARD_CHECKPOINTS]["M"].items()
        }
        shards = self._shards()
        ended = item.get(schema.ENDED_SHARDS, {}).get("SS", [])
        gone = sorted(set(checkpoints) - {s["ShardId"] for s in shards} - set(ended))
        if gone:
            raise _gone_unread(gone, checkpoints, recorder)
        unread = _lapsed_unguarded(item, shards, checkpoints, revision)
        if unread:
            raise _lapsed(unread, recorder)
        for shard in shards:
            checkpoint = checkpoints.get(shard["ShardId"])
            pending = self._shard_pending(shard, checkpoint, moment)
            if pending is not None:
                return Coverage(pending, revision)
        return Coverage(None, revision)

    def _shard_pending(
        self, shard: Mapping[str, Any], checkpoint: str | None, moment: float
    ) -> str | None:
        """Return why ``shard`` may hold an unindexed record made before ``moment``."""
        shard_id: str = shard["ShardId"]
        ending = shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
        if (
            ending is not None
            and checkpoint is not None
            and int(checkpoint) >= int(ending)
        ):
            return None  # closed, and indexed to its end
        params: dict[str, Any] = {"StreamArn": self._arn(), "ShardId": shard_id}
        if checkpoint is None:
            params["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            params["SequenceNumber"] = checkpoint
        try:
            iterator: str | None = self._call("get_shard_iterator", **params).get(
                "ShardIterator"
            )
            empty = 0
            while iterator is not None and empty < _EMPTY_PAGES:
                page = self._call(
                    "get_records", ShardIterator=iterator, Limit=_RECORDS_READ
                )
                # A deletion or a change of an item is no event saved.
                saves = [
                    r for r in page.get("Records", []) if r["eventName"] == _INSERT
                ]
                if saves:
                    fields = saves[0]["dynamodb"]
                    created = fields.get("ApproximateCreationDateTime")
                    if created is not None and float(created) > moment:
                        return None  # what follows came after the moment
                    return (
                        f"stream shard {shard_id} holds record "
                        f"{fields['SequenceNumber']}, an event saved before the "
                        "events table was scanned, not indexed yet"
                    )
                empty = 0 if page.get("Records") else empty + 1
                iterator = page.get("NextShardIterator")
        except _RefusedError as refused:
            return f"stream shard {shard_id} refused an iterator ({refused})"
        return None  # read to its end, or nothing after the checkpoint

    def _call(self, operation: str, **params: Any) -> Any:
        """Call the Streams API; its errors translated, but a refused iterator's."""
        try:
            return getattr(self._client(), operation)(**params)
        except botocore.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in _RENEWABLE:
                raise _RefusedError(code) from error
            raise translate_client_error(error) from error
        except botocore.exceptions.BotoCoreError:
            with translate_errors(operation=operation):
                raise

    def _shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        params: dict[str, Any] = {"StreamArn": self._arn()}
        while True:
            description = self._call("describe_stream", **params)["StreamDescription"]
            shards.extend(description["Shards"])
            last = description.get("LastEvaluatedShardId")
            if last is None:
                return shards
            params["ExclusiveStartShardId"] = last

    def _arn(self) -> str:
        if self._stream_arn is None:
            recorder = self.recorder
            table = recorder.connection.call(
                "describe_table", TableName=recorder.events_table_name
            )["Table"]
            self._stream_arn = str(table["LatestStreamArn"])
        return self._stream_arn

    def _client(self) -> Any:
        if self._streams is None:
            self._streams = self.recorder.connection.streams_client(
                timestamp_parser=_epoch_seconds
            )
        return self._streams


def _lapsed_unguarded(
    item: Mapping[str, Any],
    shards: list[dict[str, Any]],
    checkpoints: dict[str, str],
    revision: int,
) -> list[str]:
    """Return the shards without a checkpoint whose records may have expired unread.

    As the indexer judges them: it re-indexes for them.
    """
    # Imported here: ledger.reindexing imports the indexed recorder, which
    # imports this module.
    from ledger.index_rounds import _Round  # noqa: PLC0415
    from ledger.reindexing import lapsed_unguarded  # noqa: PLC0415

    state = _Round(0, checkpoints, revision)
    if schema.REINDEX_STARTED in item:
        state.reindex_started = float(item[schema.REINDEX_STARTED]["N"])
    if schema.REINDEX_CAUGHT_UP in item:
        state.reindex_caught_up = float(item[schema.REINDEX_CAUGHT_UP]["N"])
    return lapsed_unguarded(
        state, {shard["ShardId"]: shard for shard in shards}, time.time()
    )


def _lapsed(
    unread: list[str], recorder: DynamoDBIndexedApplicationRecorder
) -> DataError:
    """Say that shards without a checkpoint may have lost records unread."""
    return DataError(
        f"The indexer of {recorder.events_table_name!r} holds no checkpoint of "
        f"stream shard(s) {', '.join(unread)}, which are read from their oldest "
        "record (never refused as trimmed), and last found such shards empty "
        "(or began a pass of a re-index) more than the stream's 24-hour "
        "retention ago: records of them may have expired unindexed, so the "
        "events in no readable batch of "
        f"{recorder.notifications_table_name!r} cannot be told from the "
        "batch's (saves the index lacks could stand in for events lost from "
        f"the events table). Nothing was applied. {_REINDEX_NEXT}"
    )


def _gone_unread(
    gone: list[str],
    checkpoints: Mapping[str, str],
    recorder: DynamoDBIndexedApplicationRecorder,
) -> DataError:
    """Say that checkpointed shards left the stream before being read to their end."""
    shown = ", ".join(f"{shard} (at record {checkpoints[shard]})" for shard in gone)
    return DataError(
        f"The indexer of {recorder.events_table_name!r} holds checkpoints of "
        f"stream shards the events table's stream no longer lists: {shown}, "
        "and did not record reading them to their end: records of them may "
        "have expired unindexed (or, the stream having been disabled and "
        "enabled again, they are of the earlier stream, and saves made while "
        "it was off are in none), so the events in no readable batch of "
        f"{recorder.notifications_table_name!r} cannot be told from the "
        "batch's (saves the index lacks could stand in for events lost from "
        f"the events table). Nothing was applied. {_REINDEX_NEXT}"
    )


_REINDEX_NEXT: Final = (
    "An indexer reading the events table's current stream re-indexes from "
    "the events table on its next round (one started before that stream was "
    "enabled reads the earlier one: restart it), and a re-index stops at the "
    "damaged batch: restore the batch (a backup of the "
    "notifications table), or rebuild the projection from the events table "
    "(ledger projections rebuild NAME --source scan)."
)
"""What follows a refusal for records that may have expired unindexed."""


def _epoch_seconds(value: Any) -> float:
    """Return a timestamp of a Streams answer as epoch seconds."""
    if isinstance(value, int | float):  # how the API sends them
        return float(value)
    return botocore.utils.parse_timestamp(value).timestamp()
