"""Creating, describing and deleting ledger's DynamoDB tables."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from eventsourcing.persistence import OperationalError, ProgrammingError

from ledger.dynamodb.client import DynamoDBConnection, TableNotFoundError

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import (
        CreateTableInputTypeDef,
        TableDescriptionTypeDef,
    )

_ACTIVE_TIMEOUT = 120.0


def ensure_table(
    connection: DynamoDBConnection, definition: CreateTableInputTypeDef
) -> None:
    """Create a table unless it exists, then wait until it is active.

    An existing table is left exactly as it is (never replaced or emptied);
    its key schema is checked, so a table of the same name made for something
    else is reported rather than written into.
    """
    name = definition["TableName"]
    if name in connection.known_tables:
        return
    description: TableDescriptionTypeDef
    try:
        description = connection.call("describe_table", TableName=name)["Table"]
    except TableNotFoundError:
        try:
            connection.call("create_table", **definition)
        except OperationalError as error:
            if "ResourceInUse" not in str(error):
                raise
        description = _wait_until_active(connection, name)
    else:
        if description["TableStatus"] != "ACTIVE":
            description = _wait_until_active(connection, name)
    _check_key_schema(description, definition)
    connection.known_tables.add(name)


def _wait_until_active(
    connection: DynamoDBConnection, name: str
) -> TableDescriptionTypeDef:
    deadline = time.monotonic() + _ACTIVE_TIMEOUT
    while True:
        table: TableDescriptionTypeDef
        try:
            table = connection.call("describe_table", TableName=name)["Table"]
        except TableNotFoundError:  # not listed yet
            table = {"TableStatus": "CREATING"}
        if table["TableStatus"] == "ACTIVE":
            return table
        if time.monotonic() > deadline:
            raise OperationalError(
                f"DynamoDB table {name} was not active after {_ACTIVE_TIMEOUT:.0f}s "
                f"(status {table['TableStatus']})."
            )
        time.sleep(0.2)


def _check_key_schema(
    description: TableDescriptionTypeDef, definition: CreateTableInputTypeDef
) -> None:
    """Refuse a table whose keys (names, roles and types) are not ledger's."""

    def keys(
        table: TableDescriptionTypeDef | CreateTableInputTypeDef,
    ) -> list[tuple[str, str, str]]:
        types = {
            a["AttributeName"]: a["AttributeType"]
            for a in table.get("AttributeDefinitions", [])
        }
        return [
            (k["AttributeName"], k["KeyType"], types.get(k["AttributeName"], "?"))
            for k in table["KeySchema"]
        ]

    if keys(description) != keys(definition):
        raise ProgrammingError(
            f"DynamoDB table {definition['TableName']} exists with keys "
            f"{keys(description)} (name, role, type), but ledger needs "
            f"{keys(definition)}. Use another DYNAMODB_TABLE_PREFIX or "
            "application name; ledger never changes an existing table."
        )


def delete_table(connection: DynamoDBConnection, name: str) -> bool:
    """Delete a table; return False if there was none."""
    connection.known_tables.discard(name)
    try:
        connection.call("delete_table", TableName=name)
    except TableNotFoundError:
        return False
    return True
