"""The storage schema of projections: their tables, keys and attributes.

A projection named ``P`` (its ``name``) owns these tables
(``{prefix}P_{kind}``):

``P_v{n}`` (one per *table version* ``n``)
    Every read-model item of that version, its tracking and the last version
    applied of each aggregate. Partition key ``key`` (S) =
    ``{type_name}#{model key}`` (the read model's ``type_name``: its class
    name unless it sets one, see :class:`ledger.projections.models.ReadModel`).
    Items are JSON bodies with a revision number
    that every write checks, so concurrent writers never lose an update.
    Items written by a rebuild also carry ``epoch`` and ``previous``; a
    rebuild's deletion is an item with no body until the rebuild ends.

``P_control``
    The ``active`` pointer naming the version readers use, the ``rebuild`` in
    progress (its version, owner, committed flush and checkpoint), and
    stream-shard checkpoints. Partition key ``name`` (S).

``P_parked``
    The dead letters: events that kept failing
    (:class:`~ledger.projections.models.ParkedEvent`, whose storage keys the
    view maps here instead of to the version table). Partition key
    ``table_version`` (N), sort key ``aggregate_id`` (S); one item per
    waiting aggregate (its later events wait behind it).
"""

from __future__ import annotations

from typing import Final

# --- version tables -----------------------------------------------------------
KEY: Final = "key"
"""Partition key (S) of a version table: ``{type_name}#{model key}``."""
BODY: Final = "body"
"""(S) the read model as JSON (pydantic's ``model_dump_json``)."""
REVISION: Final = "revision"
"""(N) how many times the item was written; each write expects the one it read."""
NOTIFICATION_ID: Final = "notification_id"
"""(N) on ``Tracking#{application}`` items: the last position applied."""
ONE_POSITION: Final = "one_position"
"""(BOOL) on ``Tracking#{application}`` items: true if the version keeps this
one position for the application's sequence and no position per aggregate
(absent: it keeps one per aggregate, as versions built before it existed)."""

EPOCH: Final = "epoch"
"""(N) on items a rebuild wrote: the flush that wrote them. On the ``rebuild``
control item: the last flush committed (see :mod:`ledger.projections.epochs`)."""
PREVIOUS: Final = "previous"
"""(S) on items a rebuild wrote: the body before that flush (absent: the item
did not exist), put back if the flush never committed."""

TRACKING_PREFIX: Final = "Tracking#"
"""Key prefix of tracking items in a version table."""

# --- control table ------------------------------------------------------------
NAME: Final = "name"
"""Partition key (S) of the control table: which control item this is."""
TABLE_VERSION: Final = "table_version"
"""(N) a table version: on ``active``, the one readers use; on ``rebuild``, the
one being built. Also the partition key of the parked table."""
OWNER: Final = "owner"
"""(S) on ``rebuild``: a token naming the one run allowed to write the version
being built (a resumed run takes it over; the run it replaced can no longer
commit)."""
CHECKPOINT: Final = "checkpoint"
"""(S) on ``rebuild``: JSON of where the rebuild's history stands after the last
committed flush (a sequence position, or each Scan segment's start key)."""
SWITCHED_FROM: Final = "switched_from"
"""(N) on ``rebuild``: set when readers were switched to the version built,
to the version they left; the item goes once the catch-up is done."""
SEQUENCE_HEAD: Final = "sequence_head"
"""(N) on ``rebuild``: the application sequence's last position when the
rebuild started (applications with a sequence)."""
STARTED_AT: Final = "started_at"
"""(S) ISO time a rebuild started."""
SEQUENCE_NUMBER: Final = "sequence_number"
"""(S) on ``shard#{id}`` items: the last stream record processed in a shard."""

ACTIVE: Final = "active"
"""The control item naming the active version."""
REBUILD: Final = "rebuild"
"""The control item of the rebuild in progress (absent when none is)."""
SHARD_PREFIX: Final = "shard#"
"""Key prefix of stream-shard checkpoints in the control table."""

# --- parked table ---------------------------------------------------------------
AGGREGATE_ID: Final = "aggregate_id"
"""Sort key (S) of the parked table: the aggregate whose event is parked."""

# --- table kinds ----------------------------------------------------------------
CONTROL_TABLE: Final = "control"
PARKED_TABLE: Final = "parked"
FIRST_VERSION: Final = 1
"""The table version a projection starts with."""


def version_table_suffix(version: int) -> str:
    """Return the table-kind suffix of a table version (``v3``)."""
    return f"v{version}"
