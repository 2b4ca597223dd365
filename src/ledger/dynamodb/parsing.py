"""Reading DynamoDB's answers to ledger's bulk reads without botocore's shape walk.

botocore's JSON parser walks an answer's output shape for every attribute
value of every item: about 11 µs per 4-attribute item, ten times what
``json.loads`` of the body costs. For the answers ledger reads by the
thousand (``Query``, ``GetItem``, ``BatchGetItem`` and ``Scan`` of DynamoDB,
``GetRecords`` of DynamoDB Streams), :class:`AnswerParserFactory` gives
clients a parser that loads the body with ``json.loads`` and converts only
what botocore converts for these shapes: binary values (``B``, ``BS``, at
any depth inside ``M`` and ``L``) to bytes and timestamps
(``ApproximateCreationDateTime``) with the session's timestamp parser;
numbers (``N``, ``NS``) stay strings. Its result equals botocore's parse of
the same answer (``tests/test_fast_parsing.py`` checks this on generated
answers and on DynamoDB Local's).

Each output shape's reading is compiled once, from botocore's own model of
it, into plain functions: a structure keeps its modelled members that are
not null, as botocore's does. Everything else goes to botocore's parser
unchanged: error answers, other operations, a body that is not JSON (an
answer cut short, which ledger then refuses: see
``ledger.dynamodb.client.incomplete_answer``; one cut inside a UTF-8
character, on which botocore's own parser would raise, is read as botocore
reads other cut bodies, an answer with no members), any value of a type the model
does not expect, and every answer while botocore's parser logs at debug
level (its log holds each body).

The factory is installed through botocore's documented extension point, a
session's ``response_parser_factory`` component (:func:`install_answer_parsing`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import botocore.parsers
from botocore.utils import lowercase_dict

if TYPE_CHECKING:
    import botocore.session
    from botocore.model import Shape

FAST_OUTPUTS: Final = frozenset(
    {
        "QueryOutput",
        "ScanOutput",
        "GetItemOutput",
        "BatchGetItemOutput",
        "GetRecordsOutput",
    }
)
"""Output shapes (of DynamoDB and DynamoDB Streams) read without botocore's
walk: the answers ledger reads in bulk. Writes' answers are small."""

Converter = Callable[[Any], Any]
"""Turns one JSON value into what botocore's parser makes of it."""

_botocore_log = logging.getLogger("botocore.parsers")

_ATTRIBUTE_VALUE_MEMBERS: Final = {
    "S": ("string", None),
    "N": ("string", None),
    "B": ("blob", None),
    "SS": ("list", "string"),
    "NS": ("list", "string"),
    "BS": ("list", "blob"),
    "M": ("map", "AttributeValue"),
    "L": ("list", "AttributeValue"),
    "NULL": ("boolean", None),
    "BOOL": ("boolean", None),
}
"""DynamoDB's attribute value as botocore models it (member: type, inner
shape), recognised so that its reading can be written out by hand."""

_PLAIN_TAGS: Final = frozenset({"S", "N", "NULL", "BOOL"})
"""Attribute value types botocore returns as they are in the JSON."""
_STRING_SET_TAGS: Final = frozenset({"SS", "NS"})


class _NotCovered(Exception):  # noqa: N818 (a signal, never raised to users)
    """The answer holds something the fast reading leaves to botocore."""


def _structure_of(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise _NotCovered
    return value


def _list_of(value: Any) -> list[Any]:
    if type(value) is not list:
        raise _NotCovered
    return value


class _Compiler:
    """Compiles output shapes into converters, given the session's value parsers."""

    def __init__(self, blob: Converter, timestamp: Converter) -> None:
        self.blob = blob
        self.timestamp = timestamp
        self.structures: dict[str, Converter] = {}
        self.attribute_value: Converter | None = None
        self.attribute_map: Converter | None = None

    def converter(self, shape: Shape) -> Converter | None:
        """Return the converter of one shape's values; None: taken as they are."""
        kind = shape.type_name
        if kind == "structure":
            return self._structure(shape)
        if kind == "list":
            return self._list(shape)
        if kind == "map":
            return self._map(shape)
        if kind == "blob":
            return self.blob
        if kind == "timestamp":
            return self.timestamp
        # botocore's JSON parser returns strings, numbers and booleans as
        # json.loads made them.
        return None

    def _structure(self, shape: Shape) -> Converter | None:
        if getattr(shape, "is_document_type", False):
            return None
        known = self.structures.get(shape.name)
        if known is not None:
            return known
        if getattr(shape, "is_tagged_union", False) or getattr(
            shape, "event_stream_name", None
        ):
            return _left_to_botocore
        if _is_attribute_value(shape):
            self.attribute_value, self.attribute_map = self._attribute_readers()
            self.structures[shape.name] = self.attribute_value
            return self.attribute_value
        members: dict[str, tuple[str, Converter | None]] = {}
        same_names: set[str] = set()
        """Members whose JSON name is their name: read in place."""
        converted: list[tuple[str, Converter]] = []
        """Those of them whose values are converted (blobs, timestamps, ...)."""

        def rebuilt(value: Any) -> dict[str, Any]:
            # As botocore's: modelled members only, those that are not null.
            parsed = {}
            for json_name, raw in _structure_of(value).items():
                member = members.get(json_name)
                if member is None or raw is None:
                    continue
                name, convert = member
                parsed[name] = raw if convert is None else convert(raw)
            return parsed

        def structure(value: Any) -> dict[str, Any]:
            if (
                type(value) is dict
                and value.keys() <= same_names
                and None not in value.values()
            ):
                # DynamoDB's own answers: converted in place, as allocating a
                # dict per record costs the garbage collector's time too.
                for name, convert in converted:
                    raw = value.get(name)
                    if raw is not None:
                        value[name] = convert(raw)
                return value
            return rebuilt(value)

        # Registered before its members are compiled: shapes may nest themselves.
        self.structures[shape.name] = structure
        for name, member_shape in shape.members.items():  # type: ignore[attr-defined]
            json_name = member_shape.serialization.get("name", name)
            convert = self.converter(member_shape)
            members[json_name] = (name, convert)
            if json_name == name:
                same_names.add(name)
                if convert is not None:
                    converted.append((name, convert))
        return structure

    def _list(self, shape: Shape) -> Converter:
        convert = self.converter(shape.member)  # type: ignore[attr-defined]
        if convert is None:
            return _list_of

        def converted_list(value: Any) -> list[Any]:
            # botocore reads every list as sparse: a null stays None.
            return [None if v is None else convert(v) for v in _list_of(value)]

        return converted_list

    def _map(self, shape: Shape) -> Converter:
        if self.converter(shape.key) is not None:  # type: ignore[attr-defined]
            return _left_to_botocore
        convert = self.converter(shape.value)  # type: ignore[attr-defined]
        if convert is None:
            return _structure_of
        if convert is self.attribute_value and self.attribute_map is not None:
            return self.attribute_map

        def converted_map(value: Any) -> dict[str, Any]:
            # A null value would reach botocore's reader of its shape: rare
            # enough to leave to it.
            return {
                key: convert(_not_null(v)) for key, v in _structure_of(value).items()
            }

        return converted_map

    def _attribute_readers(self) -> tuple[Converter, Converter]:
        """Return the readers of an attribute value and of a map of them, by hand.

        Equal to botocore's walk of the shape for a value with exactly one
        type that is not null (DynamoDB's own); any other goes to botocore.
        """
        blob = self.blob

        def attribute_value(value: Any) -> Any:
            if type(value) is not dict or len(value) != 1:
                raise _NotCovered
            for tag, inner in value.items():
                if inner is None:
                    raise _NotCovered
                if tag in _PLAIN_TAGS:
                    return value
                if tag == "B":
                    value[tag] = blob(inner)
                elif tag == "M":
                    attribute_map(inner)
                elif tag == "L":
                    for index, element in enumerate(_list_of(inner)):
                        if element is not None:
                            inner[index] = attribute_value(element)
                elif tag == "BS":
                    value[tag] = [
                        None if element is None else blob(element)
                        for element in _list_of(inner)
                    ]
                elif tag in _STRING_SET_TAGS:
                    _list_of(inner)
                else:
                    raise _NotCovered
            return value

        def attribute_map(value: Any) -> Any:
            # In place: json.loads' dicts are this answer's own, and most
            # values (S, N) are kept as they are.
            for name, attribute in _structure_of(value).items():
                # The commonest types first, without a call.
                if type(attribute) is dict and len(attribute) == 1:
                    if "S" in attribute:
                        if attribute["S"] is None:
                            raise _NotCovered
                        continue
                    if "N" in attribute:
                        if attribute["N"] is None:
                            raise _NotCovered
                        continue
                    if "B" in attribute:
                        inner = attribute["B"]
                        if inner is None:
                            raise _NotCovered
                        attribute["B"] = blob(inner)
                        continue
                value[name] = attribute_value(attribute)
            return value

        return attribute_value, attribute_map


def _not_null(value: Any) -> Any:
    if value is None:
        raise _NotCovered
    return value


def _left_to_botocore(value: Any) -> Any:
    raise _NotCovered


def _is_attribute_value(shape: Shape) -> bool:
    """Whether a shape is DynamoDB's attribute value as ledger knows it."""
    if shape.name != "AttributeValue":
        return False
    members: Mapping[str, Shape] = shape.members  # type: ignore[attr-defined]
    if set(members) != set(_ATTRIBUTE_VALUE_MEMBERS):
        return False
    for name, member in members.items():
        kind, inner = _ATTRIBUTE_VALUE_MEMBERS[name]
        if member.type_name != kind or member.serialization.get("name", name) != name:
            return False
        if kind == "list":
            element = member.member  # type: ignore[attr-defined]
            found = "AttributeValue" if element.name == "AttributeValue" else None
            if (found or element.type_name) != inner:
                return False
        if kind == "map":
            if member.key.type_name != "string":  # type: ignore[attr-defined]
                return False
            if member.value.name != inner:  # type: ignore[attr-defined]
                return False
    return True


class AnswerParser(botocore.parsers.JSONParser):
    """botocore's JSON parser, reading success answers of ``FAST_OUTPUTS`` itself."""

    def __init__(self, factory: AnswerParserFactory, **defaults: Any) -> None:
        super().__init__(**defaults)
        self._factory = factory

    def parse(self, response: Mapping[str, Any], shape: Shape) -> Any:
        """Return the answer as botocore's parser would, faster where covered."""
        if response["status_code"] < 300 and shape is not None:
            read = self._factory.reader(shape)
            if read is not None and not _botocore_log.isEnabledFor(logging.DEBUG):
                try:
                    parsed = read(json.loads(response["body"].decode("utf-8")))
                except Exception:  # noqa: BLE001 (any surprise: botocore decides)
                    return self._botocores(response, shape)
                return _with_metadata(parsed, response)
        return self._botocores(response, shape)

    def _botocores(self, response: Mapping[str, Any], shape: Shape) -> Any:
        """Return botocore's parse; a success body that is not UTF-8: no members.

        botocore reads a success body that is not JSON as an answer with no
        members, but decodes it as UTF-8 outside that guard: a body cut
        inside a character would raise ``UnicodeDecodeError`` from the call,
        before ledger's check of each attempt (``incomplete_answer``) could
        refuse and retry it. Read as botocore reads any other cut body, it
        is refused and retried like them.
        """
        try:
            return super().parse(response, shape)
        except UnicodeDecodeError:
            if response["status_code"] >= 300:
                raise
            return _with_metadata({}, response)


def _with_metadata(parsed: dict[str, Any], response: Mapping[str, Any]) -> Any:
    """Add ``ResponseMetadata`` as botocore's parser builds it for a success."""
    headers = response["headers"]
    metadata: dict[str, Any] = {}
    if "x-amzn-requestid" in headers:
        metadata["RequestId"] = headers["x-amzn-requestid"]
    metadata["HTTPStatusCode"] = response["status_code"]
    metadata["HTTPHeaders"] = lowercase_dict(headers)
    algorithm = (
        response.get("context", {}).get("checksum", {}).get("response_algorithm")
    )
    if algorithm:
        metadata["ChecksumAlgorithm"] = algorithm
    parsed["ResponseMetadata"] = metadata
    return parsed


class AnswerParserFactory(botocore.parsers.ResponseParserFactory):
    """A session's response parser factory whose JSON parsers are :class:`AnswerParser`.

    ``set_parser_defaults`` works as botocore's (a ``timestamp_parser``, a
    ``blob_parser``), for both readings of an answer.
    """

    def __init__(self, fast_outputs: frozenset[str] = FAST_OUTPUTS) -> None:
        super().__init__()
        self.fast_outputs = fast_outputs
        self._parser_settings: dict[str, Any] = {}
        self._readers: dict[Shape, Converter | None] = {}

    def set_parser_defaults(self, **kwargs: Any) -> None:
        """Set the arguments parsers are made with (botocore's), for both readings."""
        super().set_parser_defaults(**kwargs)
        self._parser_settings.update(kwargs)
        self._readers = {}  # compiled with the previous value parsers

    def create_parser(self, protocol_name: str) -> botocore.parsers.ResponseParser:
        """Return a parser of one answer (botocore makes one for each)."""
        if protocol_name != "json":
            return super().create_parser(protocol_name)
        return AnswerParser(self, **self._parser_settings)

    def reader(self, shape: Shape) -> Converter | None:
        """Return the fast reading of a success answer of this shape, or None."""
        readers = self._readers
        try:
            return readers[shape]
        except KeyError:
            pass
        read: Converter | None = None
        if shape.name in self.fast_outputs:
            settings = self._parser_settings
            compiler = _Compiler(
                blob=settings.get("blob_parser") or base64.b64decode,
                timestamp=settings.get("timestamp_parser")
                or botocore.parsers.DEFAULT_TIMESTAMP_PARSER,
            )
            read = compiler.converter(shape)
        # Two threads may both compile a shape: either result will do.
        readers[shape] = read
        return read


def install_answer_parsing(session: botocore.session.Session) -> AnswerParserFactory:
    """Give a botocore session's future clients the fast reading of answers."""
    factory = AnswerParserFactory()
    session.register_component("response_parser_factory", factory)
    return factory
