"""The storage schema: every table, key and attribute ledger writes to DynamoDB.

Domain types never appear here: an event is stored as an aggregate id, a
version, a topic and opaque state bytes (already transcoded, compressed and
encrypted by ``eventsourcing``'s mapper).

Tables (``{prefix}{application}_{kind}``):

``events`` (and ``snapshots``, same shape, separate table)
    One item per event. Partition key ``aggregate_id`` (S), sort key
    ``version`` (N). Written only with ``attribute_not_exists``, so nothing is
    ever overwritten.

``notifications`` (only with ``DYNAMODB_ORDERING=sequence``, the default)
    The application sequence. One *batch* item per save, keyed by
    ``page`` (N) = ``last_position // page size`` and ``position`` (N) = the
    save's last position, holding the save's events in order (with their state
    inline when the batch fits in one item, otherwise as pointers to the
    events table). Plus one *sequence* item (``page = SEQUENCE_PAGE``) holding
    the last committed position; every save updates it in the same
    transaction under a condition on its expected value, which makes the
    sequence gap-free and its commits totally ordered. A batch holds at most
    ``MAX_TRANSACTION_ACTIONS - 2`` events, so the batch holding position
    ``p`` is filed under a position from ``p`` to ``p + 97``: readers query
    that bounded range, in the page of ``p`` and, when the range crosses
    into it, the next one.

    The page size is the table's: the first write records it on the
    sequence item (``POSITIONS_PER_PAGE``, ``PAGE_SIZE`` for a new table),
    and every later write is conditional on it, so one table never mixes
    sizes. A sequence item without it is a table written before pages
    shrank: its pages hold ``LEGACY_PAGE_SIZE`` positions, and it is read
    and appended to as such, until moved onto smaller pages
    (:mod:`.repaging`: its batches copied under their new keys, then the
    size recorded under a condition). Readers ask each page only for the
    positions that page holds, so a moved table's old keys, kept until
    removed, never meet its new ones in one Query.

    With ``DYNAMODB_ORDERING=indexed`` the same table, in the same format,
    is written by the indexer (:mod:`.indexer`), not by saves; it also holds
    the indexer's shard checkpoints (``SEQUENCE_PAGE``,
    ``INDEX_CHECKPOINTS_POSITION``).

    With ``DYNAMODB_ORDERING=stream`` there is no such table: the events
    table is all there is, ordered per aggregate, and its DynamoDB stream
    feeds readers.

``tracking``
    One item per upstream application: the last notification id processed.
    In ``stream`` ordering, one item per upstream *aggregate*, keyed
    ``{application}#{aggregate id}``: the last version processed.

``idempotency``
    One item per idempotency key a save was given: what that save stored,
    written in the save's own transaction under ``attribute_not_exists``, so
    a repeated key writes nothing. Expires (TTL) after
    ``DYNAMODB_IDEMPOTENCY_TTL`` seconds. Created at the first use of a key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.literals import KeyTypeType, ScalarAttributeTypeType
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        CreateTableInputTypeDef,
    )

# --- events and snapshots tables -------------------------------------------
AGGREGATE_ID: Final = "aggregate_id"
"""Partition key (S): the aggregate (stream) id; a UUID in its canonical text form."""
VERSION: Final = "version"
"""Sort key (N): the aggregate version the event brings the aggregate to."""
TOPIC: Final = "topic"
"""(S) the ``eventsourcing`` topic of the event class (module:qualname)."""
STATE: Final = "state"
"""(B) the event's state as the mapper made it (maybe compressed and encrypted)."""
POSITION: Final = "position"
"""(N) on events: the event's position in the application sequence, if any.
On notification batches: the sort key, the batch's last position."""
SAVE_ID: Final = "save_id"
"""(S) in ``indexed`` ordering, on each event of a save of several events: an
id shared by the save's events (absent on a save of one event)."""
SAVE_INDEX: Final = "save_index"
"""(N) with ``save_id``: the event's place in its save, from 0."""
SAVE_SIZE: Final = "save_size"
"""(N) with ``save_id``: how many events the save wrote."""

# --- notifications table ----------------------------------------------------
PAGE: Final = "page"
"""Partition key (N) of the notifications table: ``position // page size``
(the table's, ``POSITIONS_PER_PAGE``)."""
FIRST_POSITION: Final = "first_position"
"""(N) the position of a batch's first event."""
EVENTS: Final = "events"
"""(B) a batch's events, in position order: aggregate id, version, topic, and
state when stored inline, in the binary layout of :mod:`ledger.dynamodb.batches`."""
LAST_POSITION: Final = "last_position"
"""(N) on the sequence item: the highest committed position."""
POSITIONS_PER_PAGE: Final = "positions_per_page"
"""(N) on the sequence item: the table's page size, set by its first write
(absent: ``LEGACY_PAGE_SIZE``)."""

PAGE_SIZE: Final = 1_000
"""Positions per notifications partition key in a table first written now.
Small enough that no key takes one partition's limits in its whole life (at
about 0.14 WCU per indexed event, 0.46 for states that do not compress, a
page takes 140 to 460 WCU, and 20 readers of each event 280 to 1,100 RCU,
against 1,000 WCU and 3,000 RCU a second), so the
current page's key never binds the sequence's rate; larger than any batch
(at most 98 events), so the batch holding a position ends in its page or the
next."""
LEGACY_PAGE_SIZE: Final = 100_000
"""Positions per page of a table whose sequence item has no
``POSITIONS_PER_PAGE``: the size every table had before it was recorded."""
SEQUENCE_PAGE: Final = -1
"""The ``page`` of the sequence item (position 0); real pages start at 0."""
INDEX_CHECKPOINTS_POSITION: Final = 1
"""In ``indexed`` ordering, the ``position`` (on ``SEQUENCE_PAGE``) of the item
holding the indexer's stream shard checkpoints."""
REPAGE_POSITION: Final = 2
"""The ``position`` (on ``SEQUENCE_PAGE``) of the item that records how far a
move of a table's batches onto smaller pages has copied (``ledger.dynamodb.repaging``);
there only while one is under way."""
REPAGED_THROUGH: Final = "repaged_through"
"""(N) on that item: every batch ending at or before this position has been
copied to its key on the smaller pages (whose size it holds in
``POSITIONS_PER_PAGE``)."""
SHARD_CHECKPOINTS: Final = "shard_checkpoints"
"""(M) on the indexer's checkpoints item: shard id -> sequence number (S) of
the last stream record of that shard indexed (or passed over)."""
REVISION: Final = "revision"
"""(N) on the indexer's checkpoints item: raised by one at each write, which
is conditional on the revision read (two indexers cannot both advance it)."""
REINDEX_SCAN: Final = "reindex_scan"
"""(M) on the indexer's checkpoints item while it re-indexes from the events
table: Scan segment (S) -> where it stands (its LastEvaluatedKey, or NULL at
its start); a finished segment is removed."""
REINDEX_SEGMENTS: Final = "reindex_segments"
"""(N) on the indexer's checkpoints item while it re-indexes: the Scan's
TotalSegments."""
REINDEX_HELD: Final = "reindex_held"
"""(L of M) on the indexer's checkpoints item while it re-indexes: keys of
scanned events held back (a save not wholly scanned yet, and what follows it
of its aggregates)."""
REINDEX_STARTED: Final = "reindex_started"
"""(N) on the indexer's checkpoints item, from the start of a re-index's pass
until a commit of stream checkpoints after it leaves no listed shard without
one: when that pass began (epoch seconds, the indexer's clock). The stream
holds every save made since only until this moment plus its retention
(or ``reindex_caught_up``'s, if later); past that, another pass."""
REINDEX_PASS: Final = "reindex_pass"  # noqa: S105 - an attribute name
"""(N) with ``reindex_started``: which pass of the re-index that is (from 1)."""
REINDEX_CAUGHT_UP: Final = "reindex_caught_up"
"""(N) on the indexer's checkpoints item, at all times but during a re-index:
when a round last began that read every listed shard without a checkpoint to
its tip, finding nothing (or, from a first commit before any did, since when
the stream held every record). Epoch seconds, the indexer's clock; written
with a commit, or hourly by an idle round. Past it plus the stream's
retention, with a shard still without a checkpoint, the indexer re-indexes."""
ENDED_SHARDS: Final = "ended_shards"
"""(SS) on the indexer's checkpoints item: listed shards it read to their end.
A checkpointed shard that leaves ``DescribeStream`` without being among them
may have lost records the index lacks: the indexer re-indexes."""
REINDEXED_AT: Final = "reindexed_at"
"""(N) on the indexer's checkpoints item: when its last re-index finished
(epoch seconds); stream records older than that may be indexed already."""

# --- tracking table -----------------------------------------------------------
APPLICATION_NAME: Final = "application_name"
"""Partition key (S) of the tracking table: the upstream application's name,
or in ``stream`` ordering ``{application}#{aggregate id}``."""
NOTIFICATION_ID: Final = "notification_id"
"""(N) the last notification id of that application processed, or in
``stream`` ordering the last version of that aggregate."""
TRACKING_KEY_SEPARATOR: Final = "#"
"""Joins the upstream application's name and an aggregate id in a tracking key."""
SHARD_CHECKPOINT_MARK: Final = "#stream-shard#"
"""Joins the upstream application's name and a stream shard id in the key of a
stream follower's shard checkpoint (``ledger.projections.followers``)."""
SEQUENCE_NUMBER: Final = "sequence_number"
"""(S) on a shard checkpoint: the last stream record processed in that shard."""

# --- idempotency table ----------------------------------------------------------
IDEMPOTENCY_KEY: Final = "idempotency_key"
"""Partition key (S) of the idempotency table: a key the caller chose for one
command (``save(..., idempotency_key=...)``)."""
OUTCOME: Final = "outcome"
"""(S) JSON of what the save with that key stored: ``{"events": [[aggregate id,
version], ...], "positions": [...] or null}``."""
EXPIRES_AT: Final = "expires_at"
"""(N) Unix time after which the key may be used again; the table's TTL
attribute, so DynamoDB deletes the item some time after."""
FINGERPRINT: Final = "fingerprint"
"""(S, optional) The command the key's save belonged to: its name and a SHA-256
of its arguments (``ledger.commands``). Keys stored before it have none."""

# --- table kinds ---------------------------------------------------------------
EVENTS_TABLE: Final = "events"
SNAPSHOTS_TABLE: Final = "snapshots"
NOTIFICATIONS_TABLE: Final = "notifications"
TRACKING_TABLE: Final = "tracking"
IDEMPOTENCY_TABLE: Final = "idempotency"


def index_checkpoints_key() -> dict[str, AttributeValueTypeDef]:
    """Return the key of the indexer's checkpoints item (``indexed`` ordering)."""
    return {
        PAGE: {"N": str(SEQUENCE_PAGE)},
        POSITION: {"N": str(INDEX_CHECKPOINTS_POSITION)},
    }


def page_of(position: int, page_size: int) -> int:
    """Return the notifications page that holds a batch ending at ``position``.

    ``page_size`` is the table's (see ``POSITIONS_PER_PAGE``).
    """
    return position // page_size


def table_definition(
    table_name: str,
    partition_key: tuple[str, ScalarAttributeTypeType],
    sort_key: tuple[str, ScalarAttributeTypeType] | None = None,
) -> CreateTableInputTypeDef:
    """CreateTable arguments for an on-demand table.

    Each key is ``(attribute name, attribute type)``, the type ``"S"`` or ``"N"``.
    """
    keys: list[tuple[tuple[str, ScalarAttributeTypeType], KeyTypeType]] = [
        (partition_key, "HASH")
    ]
    if sort_key:
        keys.append((sort_key, "RANGE"))
    return {
        "TableName": table_name,
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": kind} for (name, kind), _ in keys
        ],
        "KeySchema": [
            {"AttributeName": name, "KeyType": role} for (name, _), role in keys
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def stream_table_definition(
    table_name: str, *, with_stream: bool
) -> CreateTableInputTypeDef:
    """CreateTable arguments for an events or snapshots table.

    The events table has a DynamoDB stream of new images (``with_stream``),
    which feeds stream-driven projections; snapshots do not need one.
    """
    definition = table_definition(table_name, (AGGREGATE_ID, "S"), (VERSION, "N"))
    if with_stream:
        definition["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": "NEW_IMAGE",
        }
    return definition


def notifications_table_definition(table_name: str) -> CreateTableInputTypeDef:
    """CreateTable arguments for a notifications table."""
    return table_definition(table_name, (PAGE, "N"), (POSITION, "N"))


def tracking_table_definition(table_name: str) -> CreateTableInputTypeDef:
    """CreateTable arguments for a tracking table."""
    return table_definition(table_name, (APPLICATION_NAME, "S"))


def idempotency_table_definition(table_name: str) -> CreateTableInputTypeDef:
    """CreateTable arguments for an idempotency-key table."""
    return table_definition(table_name, (IDEMPOTENCY_KEY, "S"))
