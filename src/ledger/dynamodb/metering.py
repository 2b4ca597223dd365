"""Count DynamoDB round trips and capacity units of any block of work.

Every DynamoDB client ledger creates is metered: each HTTP request sent
(retries included) is a round trip, and each call is counted by operation.
While a meter is open (:meth:`Metering.measure`), and only then, capacity is
also taken from the ``ConsumedCapacity`` DynamoDB returns (ledger asks for it
in the calls made while a meter is open: asking costs DynamoDB work on every
call) and estimated from the sizes of the items written and read by
DynamoDB's documented rules (see :mod:`ledger.dynamodb.limits`), so numbers
exist even where a server does not report them. A call counts in the meters
open when it starts.

Use :meth:`Metering.measure` (or :func:`ledger.dynamodb.measure`)::

    with measure(app) as meter:
        app.save(order)
    print(meter.round_trips, meter.write_units)

A meter counts every call made on its client while it is open, from any
thread.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ledger.dynamodb.limits import item_size, read_units, write_units

if TYPE_CHECKING:  # the stubs are a development dependency only
    from botocore.model import OperationModel
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import ConsumedCapacityTypeDef

_METERED = "ledger_metered"
"""Key of botocore's request context: the call started while a meter was open."""

_CAPACITY_OPERATIONS = frozenset(
    {
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactWriteItems",
        "TransactGetItems",
    }
)


@dataclass(eq=False)  # meters are told apart by identity while they run
class Meter:
    """What a block of work cost in DynamoDB calls and capacity units."""

    round_trips: int = 0
    """HTTP requests sent to DynamoDB, retries included."""
    calls: Counter[str] = field(default_factory=Counter)
    """API calls by operation name (a call retried three times counts once)."""
    read_units: float = 0.0
    """Read capacity units DynamoDB reported consuming."""
    write_units: float = 0.0
    """Write capacity units DynamoDB reported consuming."""
    estimated_read_units: float = 0.0
    """Read units estimated from the sizes of the items read."""
    estimated_write_units: float = 0.0
    """Write units estimated from the sizes of the items written."""
    items_written: int = 0
    """Items put, updated or deleted (each action of a transaction counts one)."""
    bytes_written: int = 0
    """Total size of the items written, by DynamoDB's size rules."""
    bytes_read: int = 0
    """Total size of the items read, by DynamoDB's size rules."""

    def as_dict(self) -> dict[str, int | float | dict[str, int]]:
        """Return the numbers as a plain dict (for JSON and structured logs)."""
        return {
            "round_trips": self.round_trips,
            "calls": dict(self.calls),
            "read_units": self.read_units,
            "write_units": self.write_units,
            "estimated_read_units": self.estimated_read_units,
            "estimated_write_units": self.estimated_write_units,
            "items_written": self.items_written,
            "bytes_written": self.bytes_written,
            "bytes_read": self.bytes_read,
        }

    def add(self, other: Meter) -> None:
        """Add another meter's counts to this one (e.g. of another connection)."""
        self.round_trips += other.round_trips
        self.calls.update(other.calls)
        self.read_units += other.read_units
        self.write_units += other.write_units
        self.estimated_read_units += other.estimated_read_units
        self.estimated_write_units += other.estimated_write_units
        self.items_written += other.items_written
        self.bytes_written += other.bytes_written
        self.bytes_read += other.bytes_read

    def summary(self) -> str:
        """Return a one-line human summary."""
        return (
            f"{self.round_trips} round trip{'' if self.round_trips == 1 else 's'}, "
            f"{self.read_units:g} RCU / {self.write_units:g} WCU reported "
            f"({self.estimated_read_units:g} / {self.estimated_write_units:g} "
            "estimated)"
        )


class Metering:
    """Meters for one botocore DynamoDB client; installed by ledger on each client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meters: list[Meter] = []
        self.total = Meter()
        """Everything this client has done since it was made: every round
        trip and call; capacity and sizes of the calls made while a meter was
        open (the others do not ask for them)."""
        self._meters.append(self.total)
        self._events: Any = None
        """The metered client's event hooks (set by :meth:`install`)."""

    def install(self, client: DynamoDBClient) -> None:
        """Meter a botocore DynamoDB client.

        No hook of its own runs while no meter is open: the client's owner
        calls :meth:`count_attempt` from the handler it already runs after
        every attempt (``needs-retry``, emitted once per request sent), which
        counts round trips and, in the total, calls. The hooks that size
        items and ask for consumed capacity (``provide-client-params``,
        ``after-call``) are registered while a meter is open, and only then:
        every handler costs each call a dispatch and a debug record in
        botocore (see :class:`ledger.dynamodb.client.DynamoDBConnection`).
        """
        self._events = client.meta.events

    def _hook(self, *, register: bool) -> None:
        """Register (or unregister) the hooks only an open meter needs."""
        events = self._events
        if events is None:
            return
        # botocore sends the params this handler returns; its stubs type every
        # handler as returning None.
        on_params: Any = self._on_params
        if register:
            events.register("provide-client-params.dynamodb", on_params)
            events.register("after-call.dynamodb", self._on_response)
        else:
            events.unregister("provide-client-params.dynamodb", on_params)
            events.unregister("after-call.dynamodb", self._on_response)

    @contextmanager
    def measure(self) -> Iterator[Meter]:
        """Count everything done on this client inside the ``with`` block."""
        meter = Meter()
        with self._lock:
            self._meters.append(meter)
            if len(self._meters) == 2:  # the first meter beside the total
                self._hook(register=True)
        try:
            yield meter
        finally:
            with self._lock:
                self._meters.remove(meter)
                if len(self._meters) == 1:
                    self._hook(register=False)

    # botocore event handlers -------------------------------------------------

    def _on_params(
        self,
        params: dict[str, Any],
        model: OperationModel,
        context: dict[str, Any],
        **_: Any,
    ) -> dict[str, Any] | None:
        operation = model.name
        context[_METERED] = True
        written = _written_item_sizes(operation, params)
        transactional = operation == "TransactWriteItems"
        units = sum(write_units(size, transactional=transactional) for size in written)
        with self._lock:
            for meter in self._meters:
                meter.calls[operation] += 1
                meter.estimated_write_units += units
                meter.items_written += len(written)
                meter.bytes_written += sum(written)
        if operation in _CAPACITY_OPERATIONS and "ReturnConsumedCapacity" not in params:
            return {**params, "ReturnConsumedCapacity": "TOTAL"}
        return None

    def count_attempt(
        self, operation: str, context: Mapping[str, Any], *, first: bool
    ) -> None:
        """Count one HTTP request sent (an attempt) in every meter open.

        ``context``: the call's request context; ``first``: this was the
        call's first attempt. A call that started while no meter was open
        is counted here, in the total, once (retries count as round trips,
        not calls); one that started metered was counted by its params.
        """
        with self._lock:
            for meter in self._meters:
                meter.round_trips += 1
            if first and not context.get(_METERED):
                self.total.calls[operation] += 1

    def _on_response(
        self,
        parsed: Mapping[str, Any],
        model: OperationModel,
        context: Mapping[str, Any],
        **_: Any,
    ) -> None:
        if not context.get(_METERED):
            return
        reported_read, reported_write = _consumed(
            model.name, parsed.get("ConsumedCapacity")
        )
        read_bytes, estimated_read = _read_estimate(model.name, parsed)
        with self._lock:
            for meter in self._meters:
                meter.read_units += reported_read
                meter.write_units += reported_write
                meter.bytes_read += read_bytes
                meter.estimated_read_units += estimated_read


def _written_item_sizes(operation: str, params: Mapping[str, Any]) -> list[int]:
    if operation == "PutItem":
        return [item_size(params["Item"])]
    if operation in ("UpdateItem", "DeleteItem"):
        # The stored item's size is unknown before the call; keys are a floor.
        return [item_size(params["Key"])]
    if operation == "TransactWriteItems":
        sizes = []
        for action in params["TransactItems"]:
            if "Put" in action:
                sizes.append(item_size(action["Put"]["Item"]))
            elif "Update" in action:
                sizes.append(item_size(action["Update"]["Key"]))
            elif "Delete" in action:
                sizes.append(item_size(action["Delete"]["Key"]))
        return sizes
    if operation == "BatchWriteItem":
        return [
            item_size(request["PutRequest"]["Item"])
            if "PutRequest" in request
            else item_size(request["DeleteRequest"]["Key"])
            for requests in params["RequestItems"].values()
            for request in requests
        ]
    return []


_WRITE_OPERATIONS = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
)


def _consumed(
    operation: str,
    capacity: ConsumedCapacityTypeDef | list[ConsumedCapacityTypeDef] | None,
) -> tuple[float, float]:
    if capacity is None:
        return 0.0, 0.0
    entries = capacity if isinstance(capacity, list) else [capacity]
    read = write = 0.0
    for entry in entries:
        entry_read = entry.get("ReadCapacityUnits")
        entry_write = entry.get("WriteCapacityUnits")
        if entry_read is None and entry_write is None:
            # Only a total was given: its kind is the operation's kind.
            total = float(entry.get("CapacityUnits", 0.0))
            is_write = operation in _WRITE_OPERATIONS
            entry_read, entry_write = (0.0, total) if is_write else (total, 0.0)
        read += float(entry_read or 0.0)
        write += float(entry_write or 0.0)
    return read, write


def _read_estimate(operation: str, parsed: Mapping[str, Any]) -> tuple[int, float]:
    if operation == "GetItem":
        size = item_size(parsed["Item"]) if "Item" in parsed else 0
        return size, read_units(size)
    if operation in ("Query", "Scan"):
        size = sum(item_size(item) for item in parsed.get("Items", []))
        return size, read_units(size)
    if operation == "BatchGetItem":
        sizes = [
            item_size(item)
            for items in parsed.get("Responses", {}).values()
            for item in items
        ]
        return sum(sizes), sum(read_units(size) for size in sizes)
    return 0, 0.0
