"""ledger's DynamoDB persistence module for ``eventsourcing``.

Select it with ``PERSISTENCE_MODULE=ledger.dynamodb``; see
:class:`~ledger.dynamodb.factory.DynamoDBFactory` for the settings.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from ledger.dynamodb.batches import CorruptNotificationBatchError
from ledger.dynamodb.client import (
    AmbiguousWriteError,
    DynamoDBConnection,
    TableNotFoundError,
)
from ledger.dynamodb.factory import DynamoDBFactory
from ledger.dynamodb.idempotency import RepeatedSaveError, SavedOutcome
from ledger.dynamodb.indexed_recorders import (
    DynamoDBIndexedApplicationRecorder,
    DynamoDBIndexedProcessRecorder,
    IndexWaitTimeoutError,
)
from ledger.dynamodb.limits import ItemTooLargeError, TransactionTooLargeError
from ledger.dynamodb.metering import Meter
from ledger.dynamodb.recorders import (
    DynamoDBAggregateRecorder,
    DynamoDBTrackingRecorder,
    Ordering,
)
from ledger.dynamodb.sequence_recorders import (
    DynamoDBApplicationRecorder,
    DynamoDBProcessRecorder,
)
from ledger.dynamodb.stream_recorders import (
    DynamoDBStreamApplicationRecorder,
    DynamoDBStreamProcessRecorder,
    SequenceDisabledError,
    aggregate_tracking,
)

Factory = DynamoDBFactory


def connection_of(obj: object) -> DynamoDBConnection:
    """Return the DynamoDB connection behind an application, factory or recorder."""
    if isinstance(obj, DynamoDBConnection):
        return obj
    for attribute in ("connection", "factory"):
        inner = getattr(obj, attribute, None)
        if inner is not None:
            return connection_of(inner)
    raise TypeError(
        f"{obj!r} does not use ledger's DynamoDB store: set "
        "PERSISTENCE_MODULE=ledger.dynamodb."
    )


def measure(obj: object) -> AbstractContextManager[Meter]:
    """Count the DynamoDB round trips and capacity units of a block of work.

    ``obj`` is an application, factory, recorder or connection using DynamoDB.
    """
    return connection_of(obj).measure()


__all__ = [
    "AmbiguousWriteError",
    "CorruptNotificationBatchError",
    "DynamoDBAggregateRecorder",
    "DynamoDBApplicationRecorder",
    "DynamoDBConnection",
    "DynamoDBFactory",
    "DynamoDBIndexedApplicationRecorder",
    "DynamoDBIndexedProcessRecorder",
    "DynamoDBProcessRecorder",
    "DynamoDBStreamApplicationRecorder",
    "DynamoDBStreamProcessRecorder",
    "DynamoDBTrackingRecorder",
    "Factory",
    "IndexWaitTimeoutError",
    "ItemTooLargeError",
    "Meter",
    "Ordering",
    "RepeatedSaveError",
    "SavedOutcome",
    "SequenceDisabledError",
    "TableNotFoundError",
    "TransactionTooLargeError",
    "aggregate_tracking",
    "connection_of",
    "measure",
]
