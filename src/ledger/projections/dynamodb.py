"""The DynamoDB view: read models, tracking and dead letters in DynamoDB tables.

(Over 400 lines as one concept: how one projection's items are laid out in
its tables, for reads, live commits and a rebuild's flushes alike. The
control table is :mod:`ledger.projections.control`.)

Costs: a commit is one ``TransactWriteItems`` holding each item written (2 WCU
per KB), the tracking update (2 WCU) and a check that this table version is
still the active one (2 RCU); a read is one strongly consistent ``GetItem``
(1 RCU per 4 KB), and the revisions of items a commit writes without having
read them are read first in one ``BatchGetItem`` per 100 items. See
:mod:`ledger.projections.schema` for the tables.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from eventsourcing.persistence import IntegrityError, ProgrammingError, Tracking

from ledger.dynamodb.client import (
    CONDITION_FAILED,
    TransactionCancelledError,
    TransactionConflictError,
)
from ledger.dynamodb.limits import (
    MAX_TRANSACTION_ACTIONS,
    MAX_TRANSACTION_BYTES,
    TransactionTooLargeError,
    check_item_size,
    item_size,
)
from ledger.dynamodb.recorders import (
    DynamoDBTrackingRecorder,
    _backoff,
    tracking_condition,
)
from ledger.dynamodb.schema import TRACKING_TABLE, table_definition
from ledger.dynamodb.tables import delete_table, ensure_table
from ledger.projections import schema
from ledger.projections.control import ControlTable
from ledger.projections.models import ParkedEvent
from ledger.projections.views import (
    ActiveVersionChangedError,
    ConcurrentChangeError,
    ItemWrite,
    ReadModelView,
    StoredItem,
    parked_aggregate,
    tracking_key,
)

if TYPE_CHECKING:
    from ledger.projections.projector import Projector

_MAX_CANCELLED_ATTEMPTS = 10
"""Attempts at a commit cancelled by a concurrent transaction on its items."""
_MAX_BATCH_GET_KEYS = 100
"""Keys one BatchGetItem may ask for (DynamoDB's limit)."""


class DynamoDBView(DynamoDBTrackingRecorder, ReadModelView):
    """Read models of one projection, in one table version, in DynamoDB.

    Constructed by ``eventsourcing``'s factory (``tracking_recorder(DynamoDBView)``)
    with the projection's tracking-table name, ``{prefix}{projection}_tracking``;
    its tables are named from that (see :mod:`ledger.projections.schema`).
    Without ``table_version`` it writes into the active version and checks, in
    every commit, that the version is still active (a rebuild may switch it);
    with one (:meth:`at_version`), into that version, unchecked. A rebuild
    writes its flushes through the methods under *Rebuild writes*, and the
    control table (the ``active`` pointer, the ``rebuild`` item, shard
    checkpoints) only through :attr:`control`: callers never build requests
    against these tables.
    """

    def __init__(
        self,
        connection: Any,
        tracking_table_name: str,
        *,
        originator_id_type: Any = "uuid",
        table_version: int | None = None,
    ) -> None:
        super().__init__(
            connection, tracking_table_name, originator_id_type=originator_id_type
        )
        self.base_name = tracking_table_name.removesuffix(f"_{TRACKING_TABLE}")
        self.control = ControlTable(
            connection, f"{self.base_name}_{schema.CONTROL_TABLE}"
        )
        """The projection's control table: the only way to its items."""
        self.control_table_name = self.control.table_name
        self.parked_table_name = f"{self.base_name}_{schema.PARKED_TABLE}"
        self._guard_active = table_version is None
        self._table_version = table_version

    @property
    def guard_active(self) -> bool:
        """True if commits check this version is still the active one.

        Fixed when the view is made: a view made without ``table_version``.
        """
        return self._guard_active

    # Tables and versions --------------------------------------------------------

    def create_table(self) -> None:
        """Create the control and parked tables, the pointer, this version's table."""
        self.control.create()
        ensure_table(
            self.connection,
            table_definition(
                self.parked_table_name,
                (schema.TABLE_VERSION, "N"),
                (schema.AGGREGATE_ID, "S"),
            ),
        )
        self.create_version_table(self.table_version)

    def create_version_table(self, version: int) -> None:
        """Create the table of a table version if it does not exist."""
        ensure_table(
            self.connection,
            table_definition(self.version_table_name(version), (schema.KEY, "S")),
        )

    def version_table_name(self, version: int) -> str:
        """Return the name of a table version's table."""
        return f"{self.base_name}_{schema.version_table_suffix(version)}"

    @property
    def table_version(self) -> int:
        """The table version this view reads and writes."""
        if self._table_version is None:
            self._table_version = self.active_version()
        return self._table_version

    @property
    def table_name(self) -> str:
        """The name of this view's version table."""
        return self.version_table_name(self.table_version)

    def active_version(self) -> int:
        """Return the version readers use now (strongly consistent read)."""
        return self.control.active_version()

    def get_control(self, name: str) -> dict[str, Any] | None:
        """Return a control item (see :meth:`ControlTable.get`)."""
        return self.control.get(name)

    def at_version(self, version: int) -> DynamoDBView:
        """Return a view of the same projection fixed to another table version."""
        return DynamoDBView(
            self.connection,
            self.tracking_table_name,
            originator_id_type=self.originator_id_type,
            table_version=version,
        )

    def follow_active(self) -> None:
        """Write into the active version from now on (after a switch)."""
        self._table_version = None
        self.forget_positioning()  # the active version decided its own

    def existing_versions(self) -> list[int]:
        """Return the table versions whose tables exist, oldest first."""
        prefix = f"{self.base_name}_v"
        versions: list[int] = []
        params: dict[str, Any] = {"ExclusiveStartTableName": prefix[:-1]}
        while True:
            response = self.connection.call("list_tables", **params)
            for name in response.get("TableNames", []):
                suffix = name[len(prefix) :]
                if name.startswith(prefix) and suffix.isdigit():
                    versions.append(int(suffix))
            last = response.get("LastEvaluatedTableName")
            if last is None or not last.startswith(self.base_name):
                return sorted(versions)
            params["ExclusiveStartTableName"] = last

    def delete_version(self, version: int) -> bool:
        """Delete a table version: its dead letters, then its table.

        No checks: :func:`ledger.projections.rebuild.drop_version` refuses the
        active version and the one being built. Returns False if the table
        did not exist.
        """
        # Its dead letters go too: a later version of the same number must
        # not find them.
        for item in self._parked_of_version(version, keys_only=True):
            self.connection.call(
                "delete_item",
                TableName=self.parked_table_name,
                Key={
                    schema.TABLE_VERSION: item[schema.TABLE_VERSION],
                    schema.AGGREGATE_ID: item[schema.AGGREGATE_ID],
                },
            )
        return delete_table(self.connection, self.version_table_name(version))

    # Reading --------------------------------------------------------------------------

    def item_key(self, key: str) -> tuple[str, dict[str, Any]]:
        """Return the table and DynamoDB key of the item stored under ``key``.

        Parked events (:class:`~ledger.projections.models.ParkedEvent`) live
        in the parked table, under this version; every other item in the
        version table.
        """
        aggregate_id = parked_aggregate(key)
        if aggregate_id is not None:
            return self.parked_table_name, {
                schema.TABLE_VERSION: {"N": str(self.table_version)},
                schema.AGGREGATE_ID: {"S": aggregate_id},
            }
        return self.table_name, {schema.KEY: {"S": key}}

    def load(self, key: str) -> StoredItem | None:
        """Return the item under ``key`` (one strongly consistent GetItem)."""
        table, item_key = self.item_key(key)
        response = self.connection.call(
            "get_item", TableName=table, Key=item_key, ConsistentRead=True
        )
        item = response.get("Item")
        # An item without a body is a rebuild's tombstone: absent.
        return None if item is None or schema.BODY not in item else _stored(item)

    def load_many(self, keys: Sequence[str]) -> dict[str, StoredItem | None]:
        """Return the items under ``keys`` (strongly consistent BatchGetItems of 100).

        Keys not returned are absent; unprocessed keys are asked again,
        after a jittered wait.
        """
        found: dict[str, StoredItem | None] = dict.fromkeys(keys)
        located = {key: self.item_key(key) for key in keys}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _MAX_BATCH_GET_KEYS):
            chunk = unique[start : start + _MAX_BATCH_GET_KEYS]
            by_item: dict[tuple[str, str], str] = {}
            request: dict[str, Any] = {}
            for key in chunk:
                table, item_key = located[key]
                by_item[table, _identity(item_key)] = key
                entry = request.setdefault(table, {"Keys": [], "ConsistentRead": True})
                entry["Keys"].append(item_key)
            attempt = 0
            while request:
                response = self.connection.call("batch_get_item", RequestItems=request)
                for table, items in response.get("Responses", {}).items():
                    for item in items:
                        key = by_item[table, _identity(item)]
                        # An item without a body is a rebuild's tombstone: absent.
                        found[key] = _stored(item) if schema.BODY in item else None
                request = response.get("UnprocessedKeys") or {}
                if request:
                    attempt += 1
                    _backoff(attempt)
        return found

    def load_all(self) -> dict[str, StoredItem]:
        """Return every item of this version (a Scan, plus a Query of dead letters)."""
        return {
            key: _stored(item)
            for key, item in self.stored_items()
            if schema.BODY in item
        }

    def parked_items(self) -> list[StoredItem]:
        """Return this version's parked events (one Query of the parked table)."""
        return [
            _stored(item) for item in self._parked_of_version() if schema.BODY in item
        ]

    def stored_items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield the key and DynamoDB item of everything stored in this version.

        Tracking, tombstones and the attributes a rebuild adds included (a
        strongly consistent Scan of the version table, then a Query of its
        dead letters).
        """
        for item in self.connection.items(
            "scan", TableName=self.table_name, ConsistentRead=True
        ):
            yield item[schema.KEY]["S"], item
        for item in self._parked_of_version():
            yield ParkedEvent.storage_key(item[schema.AGGREGATE_ID]["S"]), item

    def _parked_of_version(
        self, version: int | None = None, *, keys_only: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Yield the dead letters of a version (default: this one), one Query."""
        version = self.table_version if version is None else version
        params: dict[str, Any] = {
            "TableName": self.parked_table_name,
            "KeyConditionExpression": "#v = :v",
            "ExpressionAttributeNames": {"#v": schema.TABLE_VERSION},
            "ExpressionAttributeValues": {":v": {"N": str(version)}},
            "ConsistentRead": True,
        }
        if keys_only:
            params["ProjectionExpression"] = "#v, #a"
            params["ExpressionAttributeNames"]["#a"] = schema.AGGREGATE_ID
        return self.connection.items("query", **params)

    def max_tracking_id(self, application_name: str) -> int | None:
        """Return the last position of an application applied in this version."""
        response = self.connection.call(
            "get_item",
            TableName=self.table_name,
            Key={schema.KEY: {"S": tracking_key(application_name)}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return None if item is None else int(item[schema.NOTIFICATION_ID]["N"])

    def recorded_one_position(self, application_name: str) -> bool:
        """Return True if this version keeps one position for the application.

        As its tracking item records (one strongly consistent GetItem); a
        version with no tracking of the application keeps one only if it
        holds nothing yet (a Scan of at most one item): one that holds items
        was built by a feed per aggregate.
        """
        item = self._tracking_item(application_name)
        if item is not None:
            return _records_one_position(item)
        response = self.connection.call(
            "scan", TableName=self.table_name, Limit=1, ConsistentRead=True
        )
        return not response.get("Items")

    def tracked_one_position(self, application_name: str) -> bool:
        """Return True if this version's tracking item records one position.

        One strongly consistent GetItem (1 RCU); False if there is no
        tracking item (a new version, or one fed only by the stream).
        """
        item = self._tracking_item(application_name)
        return item is not None and _records_one_position(item)

    def _tracking_item(self, application_name: str) -> dict[str, Any] | None:
        """Return this version's tracking item of an application (None: none)."""
        response = self.connection.call(
            "get_item",
            TableName=self.table_name,
            Key={schema.KEY: {"S": tracking_key(application_name)}},
            ConsistentRead=True,
        )
        item: dict[str, Any] | None = response.get("Item")
        return item

    def version_description(self) -> str:
        """Return how errors name this view: its projection and table version."""
        return f"Table version {self.table_version} of projection {self.base_name}"

    # Writing --------------------------------------------------------------------------

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record a position with no read-model change."""
        ReadModelView.insert_tracking(self, tracking)

    def commit(self, writes: Sequence[ItemWrite], tracking: Tracking | None) -> None:
        """Write items and tracking in one TransactWriteItems, or raise.

        Raises ``ConcurrentChangeError`` when an item is not at the revision
        read or the tracking is already at or past the position, and
        ``ActiveVersionChangedError`` when a rebuild switched versions.
        """
        actions = [self._write_action(write) for write in writes]
        self._check_sizes(writes, actions)
        if tracking is not None:
            actions.append(self.tracking_action(tracking))
        if not actions:
            return
        guard_index = len(actions)
        if self.guard_active:
            actions.append(self.control.active_check(self.table_version))
        self._check_actions(writes, actions)
        try:
            self.transact(actions)
        except TransactionConflictError as error:
            failed = {
                i
                for i, reason in enumerate(error.reasons)
                if reason.get("Code") == CONDITION_FAILED
            }
            if self.guard_active and guard_index in failed:
                raise ActiveVersionChangedError(
                    f"Table version {self.table_version} of {self.base_name} is "
                    "no longer active (a rebuild switched readers). Nothing was "
                    "written; the projector reopens the active version."
                ) from error
            raise ConcurrentChangeError(
                f"Another writer changed items of {self.table_name} first, or "
                "the tracking is past this position. Nothing was written."
            ) from error
        except IntegrityError as error:
            raise ConcurrentChangeError(str(error)) from error

    def transact(self, actions: list[dict[str, Any]]) -> None:
        """Run one TransactWriteItems, retrying cancellations by concurrent ones.

        A failed condition raises ``TransactionConflictError`` (with the
        reasons, one per action) at once.
        """
        for attempt in range(1, _MAX_CANCELLED_ATTEMPTS + 1):
            try:
                self.connection.call("transact_write_items", TransactItems=actions)
            except TransactionCancelledError:  # not a failed condition: retry
                if attempt == _MAX_CANCELLED_ATTEMPTS:
                    raise
                _backoff(attempt)
            else:
                return

    def _check_sizes(
        self, writes: Sequence[ItemWrite], actions: list[dict[str, Any]]
    ) -> None:
        """Refuse, before sending, an item over 400 KB or a commit over 4 MB."""
        total = 0
        for write, action in zip(writes, actions, strict=True):
            if "Put" in action:
                size = item_size(action["Put"]["Item"])
                check_item_size(
                    size,
                    f"Read-model item {write.key} of {self.table_name}",
                    "Split the read model into smaller items (one per entry "
                    "rather than one growing map), or store less per item.",
                )
                total += size
        if total > MAX_TRANSACTION_BYTES:
            raise TransactionTooLargeError(
                f"A commit to {self.table_name} writes {len(writes)} read-model "
                f"items of {total:,} bytes in all, over DynamoDB's "
                f"{MAX_TRANSACTION_BYTES:,} bytes per transaction: one event "
                "writes that much. Nothing was written. Make the handlers of one "
                "event write fewer or smaller items."
            )

    def _check_actions(
        self, writes: Sequence[ItemWrite], actions: list[dict[str, Any]]
    ) -> None:
        """Refuse, before sending, a commit of more actions than one transaction."""
        if len(actions) > MAX_TRANSACTION_ACTIONS:
            raise TransactionTooLargeError(
                f"A commit to {self.table_name} needs {len(actions)} actions "
                f"({len(writes)} read-model items, the tracking and the version "
                f"check), over DynamoDB's {MAX_TRANSACTION_ACTIONS} per "
                "transaction. Nothing was written. Commit fewer items at once "
                f"(a session's commit holds at most max_actions, {self.max_actions})."
            )

    def _write_action(self, write: ItemWrite) -> dict[str, Any]:
        table, key = self.item_key(write.key)
        names = {"#r": schema.REVISION}
        if write.expected_revision == 0:
            condition = "attribute_not_exists(#r)"
            values: dict[str, Any] = {}
        else:
            condition = "#r = :r"
            values = {":r": {"N": str(write.expected_revision)}}
        common: dict[str, Any] = {
            "TableName": table,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
        }
        if values:
            common["ExpressionAttributeValues"] = values
        if write.body is None:
            return {"Delete": {**common, "Key": key}}
        item = {
            **key,
            schema.BODY: {"S": write.body},
            schema.REVISION: {"N": str(write.expected_revision + 1)},
        }
        return {"Put": {**common, "Item": item}}

    def tracking_action(self, tracking: Tracking) -> dict[str, Any]:
        """Return the action moving this version's tracking forward to ``tracking``.

        It also records, if so, that the version keeps one position for the
        application (:meth:`keeps_one_position`).
        """
        update = "SET #n = :n"
        names = {"#n": schema.NOTIFICATION_ID}
        values: dict[str, Any] = {":n": {"N": str(tracking.notification_id)}}
        if self.records_one_position(tracking):
            update += ", #o = :o"
            names["#o"] = schema.ONE_POSITION
            values[":o"] = {"BOOL": True}
        # Only forward (an event at or below the position was applied), or,
        # for a page of a total order, only over the position it follows.
        condition, after = tracking_condition(tracking)
        return {
            "Update": {
                "TableName": self.table_name,
                "Key": {schema.KEY: {"S": tracking_key(tracking.application_name)}},
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": {**values, **after},
            }
        }

    # Rebuild writes (see ledger.projections.epochs) ----------------------------------

    def stamped_put_action(
        self,
        key: str,
        body: str | None,
        revision: int,
        *,
        epoch: int,
        previous: str | None,
    ) -> dict[str, Any]:
        """Return the Put of an item written by rebuild flush ``epoch``.

        ``body`` None writes a tombstone; ``previous`` is the committed body
        before the flush (its before-image; None: the item did not exist).
        Refuses, before sending, an item over 400 KB with its before-image.
        """
        table, item_key = self.item_key(key)
        item: dict[str, Any] = {
            **item_key,
            schema.REVISION: {"N": str(revision)},
            schema.EPOCH: {"N": str(epoch)},
        }
        if body is not None:
            item[schema.BODY] = {"S": body}
        if previous is not None:
            item[schema.PREVIOUS] = {"S": previous}
        check_item_size(
            item_size(item),
            f"Read-model item {key} of {table}, with its before-image",
            "While rebuilt, an item that changes across flushes holds its "
            "previous body too: keep read-model items under 200 KB (one item "
            "per entry rather than one growing map).",
        )
        return {"Put": {"TableName": table, "Item": item}}

    def put_back_action(
        self, key: str, previous: str | None, revision: int
    ) -> dict[str, Any]:
        """Return the action putting back an item's before-image (None: delete it).

        The item put back has no epoch: it is committed state again.
        """
        if previous is None:
            return self.delete_action(key)
        table, item_key = self.item_key(key)
        return {
            "Put": {
                "TableName": table,
                "Item": {
                    **item_key,
                    schema.BODY: {"S": previous},
                    schema.REVISION: {"N": str(revision + 1)},
                },
            }
        }

    def delete_action(self, key: str) -> dict[str, Any]:
        """Return the unconditional Delete of the item under ``key`` (a tombstone)."""
        table, item_key = self.item_key(key)
        return {"Delete": {"TableName": table, "Key": item_key}}


def _records_one_position(tracking_item: Mapping[str, Any]) -> bool:
    """Return True if a tracking item records that one position is kept."""
    return bool(tracking_item.get(schema.ONE_POSITION, {}).get("BOOL", False))


def _stored(item: dict[str, Any]) -> StoredItem:
    return StoredItem(item[schema.BODY]["S"], int(item[schema.REVISION]["N"]))


def _identity(item: Mapping[str, Any]) -> str:
    """Return what tells an item of a version or parked table from the others."""
    if schema.KEY in item:
        return str(item[schema.KEY]["S"])
    return f"{item[schema.TABLE_VERSION]['N']}#{item[schema.AGGREGATE_ID]['S']}"


TView = TypeVar("TView", bound=ReadModelView)


@overload
def open_view(
    projector_class: type[Projector], env: Mapping[str, str] | None = None
) -> DynamoDBView: ...


@overload
def open_view(
    projector_class: type[Projector],
    env: Mapping[str, str] | None,
    view_class: type[TView],
) -> TView: ...


def open_view(
    projector_class: type[Projector],
    env: Mapping[str, str] | None = None,
    view_class: type[ReadModelView] = DynamoDBView,
) -> ReadModelView:
    """Open a projector's view, to run the projector or to query its read models.

    Opened the way ``eventsourcing``'s ProjectionRunner does: settings are
    read from ``env`` and ``os.environ``, each optionally prefixed with the
    projector's upper-cased name; tables are created unless ``CREATE_TABLE``
    says no. A DynamoDB view needs ``PERSISTENCE_MODULE=ledger.dynamodb``.
    Query it with :meth:`~ledger.projections.views.ReadModelView.read`.
    """
    from eventsourcing.persistence import InfrastructureFactory  # noqa: PLC0415

    from ledger.dynamodb import DynamoDBFactory  # noqa: PLC0415
    from ledger.eventsourcing_internals import (  # noqa: PLC0415
        projection_environment,
    )

    environment = projection_environment(projector_class.name, env)
    factory = InfrastructureFactory[Any].construct(env=environment)
    if issubclass(view_class, DynamoDBView) and not isinstance(
        factory, DynamoDBFactory
    ):
        module = environment.get(InfrastructureFactory.PERSISTENCE_MODULE)
        raise ProgrammingError(
            f"open_view({projector_class.__name__}) opens a DynamoDB view, but "
            f"{InfrastructureFactory.PERSISTENCE_MODULE} is "
            f"{module or 'not set (eventsourcing then stores in memory)'}: set "
            f"{InfrastructureFactory.PERSISTENCE_MODULE}=ledger.dynamodb in env "
            "or the environment (and DYNAMODB_ENDPOINT_URL for a local server)."
        )
    view: ReadModelView = factory.tracking_recorder(view_class)
    return view
