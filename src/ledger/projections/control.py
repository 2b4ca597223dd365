"""The control table of a projection: its active version, rebuild and checkpoints.

One item per name (see :mod:`ledger.projections.schema`): ``active`` (the
table version readers use), ``rebuild`` (the rebuild in progress: its
version, owner token, committed flush, checkpoint) and ``shard#{id}`` (the
local stream poller's checkpoints). :class:`ControlTable` is the one way to
read and write them; callers never build requests against the table. Each
operation is one strongly consistent GetItem (1 RCU), one conditional write
(1 WCU), or one transaction (2 WCU per item), as its docstring says.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import IntegrityError

from ledger.dynamodb.attributes import to_attributes
from ledger.dynamodb.schema import table_definition
from ledger.dynamodb.tables import ensure_table
from ledger.projections import schema


class ControlTable:
    """The control items of one projection, in its ``{projection}_control`` table.

    Conditional writes that find the item otherwise raise ``IntegrityError``;
    transactions whose condition fails raise ``TransactionConflictError``.
    """

    def __init__(self, connection: Any, table_name: str) -> None:
        self.connection = connection
        self.table_name = table_name

    def create(self) -> None:
        """Create the table and the ``active`` pointer, if they do not exist."""
        ensure_table(
            self.connection, table_definition(self.table_name, (schema.NAME, "S"))
        )
        # An existing pointer means some version is already active: keep it.
        with contextlib.suppress(IntegrityError):
            self.connection.call(
                "put_item",
                TableName=self.table_name,
                Item=to_attributes(
                    {
                        schema.NAME: schema.ACTIVE,
                        schema.TABLE_VERSION: schema.FIRST_VERSION,
                    }
                ),
                ConditionExpression="attribute_not_exists(#n)",
                ExpressionAttributeNames={"#n": schema.NAME},
            )

    def active_version(self) -> int:
        """Return the version readers use now (strongly consistent read)."""
        item = self.get(schema.ACTIVE)
        if item is None:
            return schema.FIRST_VERSION
        return int(item[schema.TABLE_VERSION]["N"])

    def get(self, name: str) -> dict[str, Any] | None:
        """Return a control item (``active``, ``rebuild``, shard checkpoints)."""
        response = self.connection.call(
            "get_item",
            TableName=self.table_name,
            Key=to_attributes({schema.NAME: name}),
            ConsistentRead=True,
        )
        item: dict[str, Any] | None = response.get("Item")
        return item

    def start_rebuild(self, version: int) -> None:
        """Record a rebuild of ``version`` as in progress (one conditional PutItem).

        Raises ``IntegrityError`` if a rebuild is already in progress.
        """
        self.connection.call(
            "put_item",
            TableName=self.table_name,
            Item=to_attributes(
                {
                    schema.NAME: schema.REBUILD,
                    schema.TABLE_VERSION: version,
                    schema.STARTED_AT: datetime.now(UTC).isoformat(),
                }
            ),
            ConditionExpression="attribute_not_exists(#n)",
            ExpressionAttributeNames={"#n": schema.NAME},
        )

    def take_over_rebuild(self, version: int, owner: str) -> None:
        """Make ``owner`` the one run allowed to write the rebuild of ``version``.

        One conditional UpdateItem; ``IntegrityError`` if the rebuild in
        progress is not of ``version``.
        """
        self.connection.call(
            "update_item",
            **self._rebuild_update(
                "SET #o = :o",
                "#v = :v",
                {"#o": schema.OWNER, "#v": schema.TABLE_VERSION},
                {":o": owner, ":v": version},
            ),
        )

    def record_sequence_head(self, head: int) -> None:
        """Store the sequence head on the rebuild in progress, once.

        One conditional UpdateItem; ``IntegrityError`` if there is no rebuild
        in progress or it already has a head.
        """
        self.connection.call(
            "update_item",
            **self._rebuild_update(
                "SET #h = :h",
                "attribute_exists(#n) AND attribute_not_exists(#h)",
                {"#h": schema.SEQUENCE_HEAD, "#n": schema.NAME},
                {":h": head},
            ),
        )

    def switch_active(self, version: int) -> int:
        """Point readers at ``version``; return the version they left.

        One transaction (of one update), conditional on the pointer not
        having moved since it was read (``TransactionConflictError`` if it did).
        """
        active = self.active_version()
        self.connection.call(
            "transact_write_items", TransactItems=[self._activate(version, active)]
        )
        return active

    def switch_to_rebuilt(self, version: int, owner: str) -> int:
        """Point readers at the version ``owner`` rebuilt; return the one they left.

        One transaction that also marks the ``rebuild`` item with the version
        left (it stays until the catch-up is done). ``TransactionConflictError``
        if ``owner`` no longer owns the rebuild or the pointer moved meanwhile.
        """
        active = self.active_version()
        mark = self._rebuild_update(
            "SET #s = :old",
            "#o = :o",
            {"#s": schema.SWITCHED_FROM, "#o": schema.OWNER},
            {":old": active, ":o": owner},
        )
        self.connection.call(
            "transact_write_items",
            TransactItems=[self._activate(version, active), {"Update": mark}],
        )
        return active

    def end_rebuild(self, owner: str) -> None:
        """Remove the ``rebuild`` item if ``owner`` owns it; else ``IntegrityError``."""
        self.connection.call(
            "delete_item",
            TableName=self.table_name,
            Key=to_attributes({schema.NAME: schema.REBUILD}),
            ConditionExpression="#o = :o",
            ExpressionAttributeNames={"#o": schema.OWNER},
            ExpressionAttributeValues=to_attributes({":o": owner}),
        )

    def shard_checkpoint(self, shard_id: str) -> str | None:
        """Return the last stream record the local poller processed in a shard."""
        item = self.get(f"{schema.SHARD_PREFIX}{shard_id}")
        return None if item is None else str(item[schema.SEQUENCE_NUMBER]["S"])

    def save_shard_checkpoint(self, shard_id: str, number: str) -> None:
        """Record the last stream record processed in a shard (one PutItem)."""
        self.connection.call(
            "put_item",
            TableName=self.table_name,
            Item=to_attributes(
                {
                    schema.NAME: f"{schema.SHARD_PREFIX}{shard_id}",
                    schema.SEQUENCE_NUMBER: number,
                }
            ),
        )

    def clear_shard_checkpoints(self) -> None:
        """Forget every shard checkpoint (a Scan of the control table, a delete each).

        The local poller then starts again from the oldest record the stream
        keeps.
        """
        found = self.connection.items(
            "scan",
            TableName=self.table_name,
            FilterExpression="begins_with(#n, :p)",
            ExpressionAttributeNames={"#n": schema.NAME},
            ExpressionAttributeValues=to_attributes({":p": schema.SHARD_PREFIX}),
        )
        for item in list(found):
            self.connection.call(
                "delete_item",
                TableName=self.table_name,
                Key={schema.NAME: item[schema.NAME]},
            )

    # Actions for a caller's transaction ------------------------------------------

    def rebuild_owner_check(self, owner: str) -> dict[str, Any]:
        """Return a transaction action that fails unless ``owner`` owns the rebuild."""
        return self._control_check(schema.REBUILD, schema.OWNER, owner)

    def rebuild_commit_action(
        self, owner: str, epoch: int, checkpoint: dict[str, Any]
    ) -> dict[str, Any]:
        """Return the action committing flush ``epoch`` and its checkpoint.

        It fails unless ``owner`` owns the rebuild and flush ``epoch - 1`` was
        the last committed.
        """
        values: dict[str, Any] = {
            ":o": owner,
            ":e": epoch,
            ":cp": json.dumps(checkpoint, sort_keys=True),
        }
        if epoch == 1:
            expected = "attribute_not_exists(#e)"
        else:
            expected = "#e = :was"
            values[":was"] = epoch - 1
        names = {"#o": schema.OWNER, "#e": schema.EPOCH, "#cp": schema.CHECKPOINT}
        return {
            "Update": self._rebuild_update(
                "SET #e = :e, #cp = :cp", f"#o = :o AND {expected}", names, values
            )
        }

    def _rebuild_update(
        self,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any],
    ) -> dict[str, Any]:
        """Return the parameters of a conditional update of the ``rebuild`` item.

        ``values`` are the expression's Python values (``{":o": owner}``).
        """
        return {
            "TableName": self.table_name,
            "Key": to_attributes({schema.NAME: schema.REBUILD}),
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_attributes(values),
        }

    def _activate(self, version: int, active: int) -> dict[str, Any]:
        """Return the action moving the ``active`` pointer from ``active``."""
        return {
            "Update": {
                "TableName": self.table_name,
                "Key": to_attributes({schema.NAME: schema.ACTIVE}),
                "UpdateExpression": "SET #v = :new",
                "ConditionExpression": "#v = :old",
                "ExpressionAttributeNames": {"#v": schema.TABLE_VERSION},
                "ExpressionAttributeValues": to_attributes(
                    {":new": version, ":old": active}
                ),
            }
        }

    def active_check(self, version: int) -> dict[str, Any]:
        """Return a transaction action that fails unless ``version`` is active."""
        return self._control_check(schema.ACTIVE, schema.TABLE_VERSION, version)

    def _control_check(
        self, name: str, attribute: str, value: str | int
    ) -> dict[str, Any]:
        """Return a ConditionCheck that control item ``name`` holds ``value``."""
        return {
            "ConditionCheck": {
                "TableName": self.table_name,
                "Key": to_attributes({schema.NAME: name}),
                "ConditionExpression": "#a = :a",
                "ExpressionAttributeNames": {"#a": attribute},
                "ExpressionAttributeValues": to_attributes({":a": value}),
            }
        }


__all__ = ["ControlTable"]
