"""DynamoDB's size rules and limits, applied before a request is sent.

Sizes follow DynamoDB's documented item-size rules: attribute names count,
strings and binaries count their bytes, a number counts about one byte per
two significant digits plus one, a list or map counts three bytes plus one
byte per element plus its contents. Capacity units follow the documented
rounding: writes per started 1 KB, strongly consistent reads per started
4 KB, transactional operations twice that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from eventsourcing.persistence import DataError

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

MAX_ITEM_BYTES: Final = 400 * 1024
"""DynamoDB's item size limit (names and values together)."""
MAX_TRANSACTION_ACTIONS: Final = 100
"""DynamoDB's limit on actions in one TransactWriteItems call."""
MAX_TRANSACTION_BYTES: Final = 4 * 1024 * 1024
"""DynamoDB's limit on the total size of one TransactWriteItems call."""
WRITE_UNIT_BYTES: Final = 1024
READ_UNIT_BYTES: Final = 4096


class ItemTooLargeError(DataError):
    """An event (or snapshot) is larger than DynamoDB's 400 KB item limit."""


class TransactionTooLargeError(DataError):
    """A save needs more actions or bytes than one DynamoDB transaction allows."""


def number_size(text: str) -> int:
    """Return the stored size of a DynamoDB number given as text."""
    digits = text.lstrip("-").replace(".", "").strip("0") or "0"
    return (len(digits) + 1) // 2 + 1


def value_size(value: AttributeValueTypeDef) -> int:
    """Return the stored size of one attribute value in wire form ({"S": ...})."""
    ((kind, _),) = value.items()  # exactly one type tag, as on the wire
    if kind == "S":
        return len(value["S"].encode())
    if kind == "N":
        return number_size(value["N"])
    if kind == "B":
        return len(value["B"])
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + value_size(element) for element in value["L"])
    if kind == "M":
        return 3 + sum(
            1 + len(name.encode()) + value_size(element)
            for name, element in value["M"].items()
        )
    if kind == "SS":
        return sum(len(element.encode()) for element in value["SS"])
    if kind == "NS":
        return sum(number_size(element) for element in value["NS"])
    if kind == "BS":
        return sum(len(element) for element in value["BS"])
    raise ValueError(f"Unknown DynamoDB attribute type {kind!r}")


def item_size(item: Mapping[str, AttributeValueTypeDef]) -> int:
    """Return the stored size of an item in wire form, by DynamoDB's rules."""
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def write_units(size: int, *, transactional: bool = False) -> int:
    """Return the write capacity units a write of an item this size consumes."""
    units = max(1, math.ceil(size / WRITE_UNIT_BYTES))
    return 2 * units if transactional else units


def read_units(size: int, *, transactional: bool = False) -> float:
    """Return the read units a strongly consistent read of ``size`` bytes consumes.

    For a Query or Scan, pass the total size of the items one response returned.
    """
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(2 * units if transactional else units)


_EVENT_ADVICE = (
    "Make the event smaller: keep large payloads elsewhere (S3) and store a "
    "reference, or enable compression (COMPRESSOR_TOPIC=zlib)."
)


def check_item_size(size: int, what: str, advice: str = _EVENT_ADVICE) -> None:
    """Raise :class:`ItemTooLargeError` if an item is over DynamoDB's limit."""
    if size > MAX_ITEM_BYTES:
        raise ItemTooLargeError(
            f"{what} is {size:,} bytes as a DynamoDB item; the limit is "
            f"{MAX_ITEM_BYTES:,} bytes (400 KB). Nothing was written. {advice}"
        )


def check_transaction(actions: int, size: int, what: str) -> None:
    """Raise :class:`TransactionTooLargeError` if a save exceeds one transaction."""
    if actions > MAX_TRANSACTION_ACTIONS:
        raise TransactionTooLargeError(
            f"{what} needs {actions} writes in one DynamoDB transaction; the limit "
            f"is {MAX_TRANSACTION_ACTIONS}. Nothing was written. Save fewer events "
            "at once (save the aggregate more often, or split the command)."
        )
    if size > MAX_TRANSACTION_BYTES:
        raise TransactionTooLargeError(
            f"{what} is {size:,} bytes in one DynamoDB transaction; the limit is "
            f"{MAX_TRANSACTION_BYTES:,} bytes (4 MB). Nothing was written. Save "
            "fewer or smaller events at once."
        )
