"""A request botocore refuses to send is a ``ProgrammingError`` saying what to fix.

botocore checks a request's parameters before sending it
(``ParamValidationError``: a value of the wrong type, say). That is no
``PersistenceError``: untranslated, it would escape callers that catch
eventsourcing's errors, as every other DynamoDB failure reaches them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import botocore.exceptions
import pytest
from eventsourcing.persistence import (
    PersistenceError,
    ProcessRecorder,
    ProgrammingError,
    Tracking,
)

from ledger.dynamodb import DynamoDBConnection, DynamoDBFactory, TableNotFoundError
from ledger.dynamodb.tables import delete_table


def causes(error: BaseException) -> Iterator[BaseException]:
    """Yield the errors ``error`` was raised from, nearest first."""
    while error.__cause__ is not None:
        error = error.__cause__
        yield error


@pytest.fixture
def recorder(factory: DynamoDBFactory) -> ProcessRecorder:
    """A process recorder (events and tracking) on this test's tables."""
    return factory.process_recorder()


def test_a_wrongly_typed_name_read_is_a_programming_error_naming_call_and_parameter(
    recorder: ProcessRecorder,
) -> None:
    upstream = uuid.uuid4()  # the upstream application's id, not its name

    with pytest.raises(PersistenceError) as raised:
        recorder.max_tracking_id(upstream)  # type: ignore[arg-type]

    error = raised.value
    assert isinstance(error, ProgrammingError)
    assert any(
        isinstance(cause, botocore.exceptions.ParamValidationError)
        for cause in causes(error)
    )
    assert "tracking: GetItem was not sent" in str(error)  # the table, the call
    assert "parameter Key.application_name.S" in str(error)
    assert "names and keys as str" in str(error)


def test_a_wrongly_typed_name_written_is_a_programming_error_and_nothing_is_written(
    recorder: ProcessRecorder,
) -> None:
    upstream = uuid.uuid4()

    with pytest.raises(ProgrammingError, match="UpdateItem was not sent") as raised:
        recorder.insert_tracking(Tracking(upstream, 1))  # type: ignore[arg-type]

    # Refused before sending: not a write whose answer was lost.
    assert "may have been applied" not in str(raised.value)
    assert recorder.max_tracking_id(str(upstream)) is None


@pytest.fixture
def connection(recorder: ProcessRecorder) -> DynamoDBConnection:
    """The connection of ``recorder``'s factory."""
    made: DynamoDBConnection = recorder.connection  # type: ignore[attr-defined]
    return made


def test_a_table_dynamodb_does_not_have_is_a_table_not_found_error_naming_it(
    connection: DynamoDBConnection,
) -> None:
    with pytest.raises(TableNotFoundError, match="no-such-table") as raised:
        connection.call("describe_table", TableName="no-such-table")

    assert isinstance(raised.value, ProgrammingError)  # callers catching it still do
    assert "ledger tables create" in str(raised.value)


def test_deleting_a_table_that_is_not_there_says_there_was_none(
    connection: DynamoDBConnection,
) -> None:
    assert delete_table(connection, "no-such-table") is False


def test_deleting_a_table_by_a_name_botocore_refuses_raises_not_there_was_none(
    connection: DynamoDBConnection,
) -> None:
    # Nothing was sent, so nothing says the table is not there.
    with pytest.raises(ProgrammingError, match="DeleteTable was not sent") as raised:
        delete_table(connection, "")

    assert not isinstance(raised.value, TableNotFoundError)
    assert "parameter TableName" in str(raised.value)
