"""DynamoDB attribute maps from Python values and back, by boto3's own serializers.

For control-plane items (a projection's control table, idempotency keys read
back, a rebuild's resume): ``{"version": 3}`` instead of
``{"version": {"N": "3"}}``. The save and load paths, and other code run once
per event, write and read their maps by hand: boto3's serializers take 8 to 13
times as long per item (a few µs; ``benchmarks/bench_libraries.py``).
Numbers come back as ``Decimal`` (boto3's choice: DynamoDB numbers are
decimal), so readers of an ``N`` attribute still convert it with ``int``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

if TYPE_CHECKING:  # the stubs are a development dependency only
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()


def to_attributes(values: Mapping[str, Any]) -> dict[str, AttributeValueTypeDef]:
    """Return the attribute map (an item, a key, expression values) of ``values``.

    ``str`` becomes ``S``, ``int`` and ``Decimal`` ``N``, ``bytes`` ``B``; a
    ``float`` is refused (``TypeError``), as boto3 refuses it.
    """
    return {name: _SERIALIZER.serialize(value) for name, value in values.items()}


def from_attributes(item: Mapping[str, Any]) -> dict[str, Any]:
    """Return the Python values of an attribute map (an item DynamoDB returned)."""
    return {name: _DESERIALIZER.deserialize(value) for name, value in item.items()}


__all__ = ["from_attributes", "to_attributes"]
