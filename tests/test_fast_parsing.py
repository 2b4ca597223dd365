"""ledger reads DynamoDB's answers to its bulk reads as botocore does, without its walk.

``ledger.dynamodb.parsing`` reads the success answers of Query, Scan,
GetItem, BatchGetItem and GetRecords with ``json.loads`` and a conversion
compiled from botocore's model. Generated answers (every attribute type, at
any depth, unicode, empty strings and sets) are read by both parsers and
compared; so are answers DynamoDB Local gives a ledger client and a plain
boto3 client. Anything else (errors, bodies cut short, surprises) is
botocore's to read.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.parsers
import botocore.session
import pytest
from botocore.awsrequest import HeadersDict
from hypothesis import given
from hypothesis import strategies as st

from ledger.dynamodb.client import DynamoDBConnection
from ledger.dynamodb.parsing import FAST_OUTPUTS, AnswerParser, AnswerParserFactory

DYNAMODB = botocore.session.get_session().get_service_model("dynamodb")
STREAMS = botocore.session.get_session().get_service_model("dynamodbstreams")


def _utc(value: Any) -> datetime:
    return datetime.fromtimestamp(value, UTC)


# --- answers as DynamoDB renders them ---------------------------------------------

names = st.text(max_size=8)
texts = st.text(max_size=12)
numbers = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
)
blobs = st.binary(max_size=40).map(lambda raw: base64.b64encode(raw).decode())
scalar_values = st.one_of(
    st.builds(lambda v: {"S": v}, texts),
    st.builds(lambda v: {"N": v}, numbers),
    st.builds(lambda v: {"B": v}, blobs),
    st.builds(lambda v: {"BOOL": v}, st.booleans()),
    st.just({"NULL": True}),
    st.builds(lambda v: {"SS": v}, st.lists(texts, max_size=3, unique=True)),
    st.builds(lambda v: {"NS": v}, st.lists(numbers, max_size=3, unique=True)),
    st.builds(lambda v: {"BS": v}, st.lists(blobs, max_size=3, unique=True)),
)
attribute_values = st.recursive(
    scalar_values,
    lambda inner: st.one_of(
        st.builds(lambda v: {"M": v}, st.dictionaries(names, inner, max_size=3)),
        st.builds(lambda v: {"L": v}, st.lists(inner, max_size=3)),
    ),
    max_leaves=12,
)
items = st.dictionaries(names, attribute_values, max_size=5)
keys = st.dictionaries(names, scalar_values, min_size=1, max_size=2)
table_names = st.text(
    alphabet=st.characters(codec="ascii", categories=["L", "N"]), min_size=3, max_size=8
)
units = st.floats(min_value=0, max_value=1e6, allow_nan=False)
capacity = st.fixed_dictionaries(
    {},
    optional={
        "ReadCapacityUnits": units,
        "WriteCapacityUnits": units,
        "CapacityUnits": units,
    },
)
consumed_capacity = st.fixed_dictionaries(
    {"TableName": table_names},
    optional={
        "CapacityUnits": units,
        "ReadCapacityUnits": units,
        "Table": capacity,
        "LocalSecondaryIndexes": st.dictionaries(table_names, capacity, max_size=2),
        "GlobalSecondaryIndexes": st.dictionaries(table_names, capacity, max_size=2),
    },
)
counts = st.integers(0, 10_000)
pages = st.fixed_dictionaries(
    {"Items": st.lists(items, max_size=4), "Count": counts, "ScannedCount": counts},
    optional={"LastEvaluatedKey": keys, "ConsumedCapacity": consumed_capacity},
)
got_items = st.fixed_dictionaries(
    {}, optional={"Item": items, "ConsumedCapacity": consumed_capacity}
)
keys_and_attributes = st.fixed_dictionaries(
    {"Keys": st.lists(keys, min_size=1, max_size=3)},
    optional={
        "ProjectionExpression": texts,
        "ConsistentRead": st.booleans(),
        "ExpressionAttributeNames": st.dictionaries(texts, texts, max_size=2),
        "AttributesToGet": st.lists(texts, min_size=1, max_size=2),
    },
)
batches = st.fixed_dictionaries(
    {
        "Responses": st.dictionaries(
            table_names, st.lists(items, max_size=3), max_size=2
        ),
        "UnprocessedKeys": st.dictionaries(
            table_names, keys_and_attributes, max_size=2
        ),
    },
    optional={"ConsumedCapacity": st.lists(consumed_capacity, max_size=2)},
)
stream_records = st.fixed_dictionaries(
    {
        "Keys": keys,
        "SequenceNumber": st.integers(0, 10**24).map(str),
        "SizeBytes": st.integers(1, 400_000),
        "StreamViewType": st.sampled_from(
            ["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"]
        ),
    },
    optional={
        # Epoch seconds, as DynamoDB Streams sends them (whole or not).
        "ApproximateCreationDateTime": st.one_of(
            st.integers(0, 2_000_000_000),
            st.floats(0, 2_000_000_000, allow_nan=False).map(lambda s: round(s, 3)),
        ),
        "NewImage": items,
        "OldImage": items,
    },
)
records = st.fixed_dictionaries(
    {
        "eventID": st.uuids().map(str),
        "eventName": st.sampled_from(["INSERT", "MODIFY", "REMOVE"]),
        "eventVersion": st.just("1.1"),
        "eventSource": st.just("aws:dynamodb"),
        "awsRegion": st.sampled_from(["us-east-1", "eu-west-1", "ddblocal"]),
        "dynamodb": stream_records,
    },
    optional={
        "userIdentity": st.fixed_dictionaries(
            {
                "PrincipalId": st.just("dynamodb.amazonaws.com"),
                "Type": st.just("Service"),
            }
        )
    },
)
record_pages = st.fixed_dictionaries(
    {"Records": st.lists(records, max_size=4)},
    optional={"NextShardIterator": texts},
)

ANSWERS = {
    "Query": (DYNAMODB, pages),
    "Scan": (DYNAMODB, pages),
    "GetItem": (DYNAMODB, got_items),
    "BatchGetItem": (DYNAMODB, batches),
    "GetRecords": (STREAMS, record_pages),
}


def http_answer(body: bytes | str, status: int = 200, **headers: str) -> dict[str, Any]:
    """Return an HTTP answer as botocore's endpoint hands it to a parser."""
    return {
        "status_code": status,
        "headers": HeadersDict(
            {
                "x-amzn-RequestId": "R3QU35T",
                "Content-Type": "application/x-amz-json-1.0",
                "Content-Length": str(len(body)),
                **headers,
            }
        ),
        "body": body.encode() if isinstance(body, str) else body,
        "context": {"operation_name": "Query"},
    }


def parsers(**defaults: Any) -> tuple[Any, Any, AnswerParserFactory]:
    """Return botocore's parser and ledger's, made with the same defaults."""
    plain = botocore.parsers.ResponseParserFactory()
    fast = AnswerParserFactory()
    if defaults:
        plain.set_parser_defaults(**defaults)
        fast.set_parser_defaults(**defaults)
    return plain.create_parser("json"), fast.create_parser("json"), fast


# --- generated answers ------------------------------------------------------------


@pytest.mark.parametrize("operation", sorted(ANSWERS))
@given(data=st.data(), ascii_only=st.booleans())
def test_an_answer_is_read_as_botocore_reads_it(operation, data, ascii_only):
    model, answers = ANSWERS[operation]
    shape = model.operation_model(operation).output_shape
    answer = data.draw(answers)
    body = json.dumps(answer, ensure_ascii=ascii_only)
    botocore_parser, ledger_parser, factory = parsers()

    expected = botocore_parser.parse(http_answer(body), shape)
    # The fast reading itself, so that a silent hand-over to botocore fails.
    read = factory.reader(shape)
    assert read is not None
    fast = read(json.loads(body))

    assert ledger_parser.parse(http_answer(body), shape) == expected
    assert {**fast, "ResponseMetadata": expected["ResponseMetadata"]} == expected


@given(answer=record_pages)
def test_stream_timestamps_go_through_the_sessions_timestamp_parser(answer):
    shape = STREAMS.operation_model("GetRecords").output_shape
    body = json.dumps(answer)
    botocore_parser, ledger_parser, _ = parsers(timestamp_parser=_utc)

    parsed = ledger_parser.parse(http_answer(body), shape)

    assert parsed == botocore_parser.parse(http_answer(body), shape)
    for record in parsed["Records"]:
        created = record["dynamodb"].get("ApproximateCreationDateTime")
        assert created is None or created.tzinfo is UTC


def test_binary_values_deep_inside_maps_and_lists_become_bytes():
    shape = DYNAMODB.operation_model("GetItem").output_shape
    item = {
        "deep": {"L": [{"M": {"b": {"B": "AAE="}, "bs": {"BS": ["Ag==", ""]}}}]},
        "n": {"N": "1.50"},
        "ns": {"NS": ["1", "2"]},
    }
    _, ledger_parser, _ = parsers()

    parsed = ledger_parser.parse(http_answer(json.dumps({"Item": item})), shape)

    assert parsed["Item"] == {
        "deep": {"L": [{"M": {"b": {"B": b"\0\1"}, "bs": {"BS": [b"\2", b""]}}}]},
        "n": {"N": "1.50"},  # numbers stay strings, as botocore leaves them
        "ns": {"NS": ["1", "2"]},
    }


def test_response_metadata_is_botocores():
    shape = DYNAMODB.operation_model("Query").output_shape
    answer = http_answer('{"Items":[],"Count":0,"ScannedCount":0}', **{"X-Extra": "1"})
    answer["context"]["checksum"] = {"response_algorithm": "crc32"}
    botocore_parser, ledger_parser, _ = parsers()

    parsed = ledger_parser.parse(answer, shape)

    assert parsed == botocore_parser.parse(answer, shape)
    assert parsed["ResponseMetadata"]["RequestId"] == "R3QU35T"
    assert parsed["ResponseMetadata"]["HTTPHeaders"]["x-extra"] == "1"


# --- what is left to botocore -----------------------------------------------------

UNEXPECTED_BODIES = {
    "cut short": '{"Items":[{"k":{"S":"a"}}',
    "empty": "",
    "not an object": "[]",
    "not JSON": "<html>Bad Gateway</html>",
    "unknown members": '{"Items":[],"Count":0,"ScannedCount":0,"Later":{"x":1}}',
    "null members": '{"Items":[],"Count":null,"LastEvaluatedKey":null}',
    "two types in a value": '{"Items":[{"k":{"S":"a","N":"1"}}],"Count":1}',
    "a null type": '{"Items":[{"k":{"S":null}}],"Count":1}',
    "an unknown type": '{"Items":[{"k":{"X":"a"}}],"Count":1}',
    "an empty value": '{"Items":[{"k":{}}],"Count":1}',
    "a null value": '{"Items":[{"k":null}],"Count":1}',
    "a null item": '{"Items":[null],"Count":1}',
    "null elements": '{"Items":[{"k":{"L":[null]},"b":{"BS":[null,"AA=="]}}]}',
    "a number for a string": '{"Items":[{"k":{"S":5}}],"Count":"1"}',
    "an object for a list": '{"Items":{"k":{"S":"a"}},"Count":1}',
    "a string for an item": '{"Items":["ab"],"Count":1}',
    "base64 with junk": '{"Items":[{"k":{"B":"AA\\n!=="}}],"Count":1}',
}


@pytest.mark.parametrize("body", UNEXPECTED_BODIES.values(), ids=UNEXPECTED_BODIES)
def test_an_unexpected_answer_is_read_as_botocore_reads_it(body):
    shape = DYNAMODB.operation_model("Query").output_shape
    botocore_parser, ledger_parser, _ = parsers()

    def parse(parser: Any) -> Any:
        try:
            return parser.parse(http_answer(body), shape)
        except Exception as error:  # noqa: BLE001 (both must fail alike)
            return type(error)

    assert parse(ledger_parser) == parse(botocore_parser)


@pytest.mark.parametrize("status", [400, 500])
def test_an_error_answer_is_botocores_to_read(status):
    shape = DYNAMODB.operation_model("Query").output_shape
    body = '{"__type":"com.amazonaws.dynamodb#ValidationException","message":"no"}'
    botocore_parser, ledger_parser, _ = parsers()

    parsed = ledger_parser.parse(http_answer(body, status), shape)

    assert parsed == botocore_parser.parse(http_answer(body, status), shape)
    assert parsed["Error"]["Code"] == "ValidationException"


def test_other_operations_are_botocores_to_read():
    factory = AnswerParserFactory()
    read_fast = {
        name
        for model in (DYNAMODB, STREAMS)
        for name in model.operation_names
        if model.operation_model(name).output_shape is not None
        and factory.reader(model.operation_model(name).output_shape) is not None
    }

    assert read_fast == {"Query", "Scan", "GetItem", "BatchGetItem", "GetRecords"}
    assert {
        DYNAMODB.operation_model(name).output_shape.name
        for name in read_fast - {"GetRecords"}
    } | {"GetRecordsOutput"} == FAST_OUTPUTS


# --- ledger's clients, against DynamoDB Local --------------------------------------

ITEM_VALUES: dict[str, Any] = {
    "text": {"S": "ünïcødé ✓"},
    "empty": {"S": ""},
    "number": {"N": "12.50"},
    "state": {"B": bytes(range(200))},
    "blobs": {"BS": [b"\0", b"\xff\xfe"]},
    "numbers": {"NS": ["1", "2.5"]},
    "texts": {"SS": ["a", "ß"]},
    "flag": {"BOOL": False},
    "nothing": {"NULL": True},
    "nested": {
        "M": {
            "list": {
                "L": [{"B": b"\1\2"}, {"M": {"x": {"BS": [b"deep"]}}}, {"N": "3"}]
            },
            # No empty map: DynamoDB Local writes one in stream images as a
            # bare {} (no type), which ledger leaves to botocore, so the
            # stream test would compare botocore with botocore. Generated
            # answers above cover empty maps.
        }
    },
}


@pytest.fixture
def store(
    dynamodb_endpoint: str, table_prefix: str
) -> Iterator[tuple[DynamoDBConnection, str]]:
    """A ledger connection and a table of its own with a stream, holding 3 items."""
    connection = DynamoDBConnection(endpoint_url=dynamodb_endpoint, max_attempts=2)
    table = f"{table_prefix}answers"
    connection.client.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={
            "StreamEnabled": True,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    )
    for version in range(3):
        connection.client.put_item(
            TableName=table,
            Item={"pk": {"S": "aggregate"}, "sk": {"N": str(version)}, **ITEM_VALUES},
        )
    connection.client.update_item(
        TableName=table,
        Key={"pk": {"S": "aggregate"}, "sk": {"N": "0"}},
        UpdateExpression="SET flag = :t",
        ExpressionAttributeValues={":t": {"BOOL": True}},
    )
    yield connection, table
    connection.client.delete_table(TableName=table)
    connection.close()


def plain_boto3(connection: DynamoDBConnection, service: str) -> Any:
    """Return a plain boto3 client of the connection's store (botocore's parser)."""
    return boto3.session.Session().client(
        service,
        endpoint_url=connection.endpoint_url,
        region_name=connection.region_name,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 (DynamoDB Local's placeholder)
    )


def without_metadata(answer: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in answer.items() if name != "ResponseMetadata"}


@pytest.fixture
def fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each answer ledger's parser leaves to botocore (by output shape)."""
    left: list[str] = []
    botocores = AnswerParser._botocores

    def counted(parser: AnswerParser, response: Any, shape: Any) -> Any:
        left.append(shape.name if shape is not None else "")
        return botocores(parser, response, shape)

    monkeypatch.setattr(AnswerParser, "_botocores", counted)
    return left


def test_a_ledger_clients_reads_equal_a_plain_boto3_clients(store, fallbacks):
    connection, table = store
    plain = plain_boto3(connection, "dynamodb")
    key = {"pk": {"S": "aggregate"}, "sk": {"N": "1"}}
    calls: list[tuple[str, dict[str, Any]]] = [
        (
            "query",
            {
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": {"S": "aggregate"}},
                "Limit": 2,
                "ReturnConsumedCapacity": "INDEXES",
            },
        ),
        ("scan", {"ReturnConsumedCapacity": "TOTAL"}),
        ("get_item", {"Key": key}),
        ("get_item", {"Key": {"pk": {"S": "none"}, "sk": {"N": "1"}}}),
    ]

    for operation, params in calls:
        ours = getattr(connection.client, operation)(TableName=table, **params)
        theirs = getattr(plain, operation)(TableName=table, **params)
        assert without_metadata(ours) == without_metadata(theirs), operation
    batch = {"RequestItems": {table: {"Keys": [key]}}}
    assert without_metadata(
        connection.client.batch_get_item(**batch)
    ) == without_metadata(plain.batch_get_item(**batch))
    # Each of ledger's answers was read by its own parser, not botocore's.
    assert not set(fallbacks) & FAST_OUTPUTS
    item = connection.client.get_item(TableName=table, Key=key)["Item"]
    assert item["state"] == {"B": bytes(range(200))}
    assert item["nested"]["M"]["list"]["L"][1] == {"M": {"x": {"BS": [b"deep"]}}}


def stream_records_of(client: Any, stream_arn: str) -> list[dict[str, Any]]:
    description = client.describe_stream(StreamArn=stream_arn)["StreamDescription"]
    shard = description["Shards"][0]
    iterator = client.get_shard_iterator(
        StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    answer = client.get_records(ShardIterator=iterator)
    return [without_metadata(record) for record in answer["Records"]]


def test_a_ledger_streams_clients_records_equal_a_plain_boto3_clients(store, fallbacks):
    connection, table = store
    stream_arn = connection.client.describe_table(TableName=table)["Table"][
        "LatestStreamArn"
    ]

    ours = stream_records_of(
        connection.streams_client(timestamp_parser=_utc), stream_arn
    )
    # GetRecords read by ledger's parser (DescribeStream and GetShardIterator
    # are botocore's).
    assert "GetRecordsOutput" not in fallbacks
    assert not set(fallbacks) & FAST_OUTPUTS
    theirs = stream_records_of(plain_boto3(connection, "dynamodbstreams"), stream_arn)

    assert len(ours) == 4  # 3 inserts and a modification
    assert ours == theirs
    assert ours[0]["dynamodb"]["ApproximateCreationDateTime"].tzinfo is UTC
    assert ours[-1]["dynamodb"]["OldImage"]["state"] == {"B": bytes(range(200))}


def test_a_ledger_client_reads_through_its_sessions_parser_factory(store):
    connection, table = store
    # A blob parser set on the connection's factory shows the client uses it.
    connection.answer_parsing.set_parser_defaults(blob_parser=lambda value: b"seen")

    answer = connection.client.query(
        TableName=table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "aggregate"}},
    )

    assert {item["state"]["B"] for item in answer["Items"]} == {b"seen"}


@pytest.mark.parametrize("padding", range(4))
def test_an_answer_cut_inside_a_character_is_refused_and_retried(
    dynamodb_endpoint, table_prefix, padding
):
    """Cut in half on the way, a body of 2-byte characters ends inside one
    for some paddings of its key: an ``OperationalError`` after the retries,
    as any answer cut short, never a bare ``UnicodeDecodeError``."""
    from faults import TRUNCATE, FaultProxy  # noqa: PLC0415

    from ledger.dynamodb.client import OperationalError  # noqa: PLC0415

    direct = DynamoDBConnection(endpoint_url=dynamodb_endpoint, max_attempts=2)
    table = f"{table_prefix}cut{padding}"
    direct.client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    key = {"pk": {"S": "k" * (padding + 1)}}
    direct.client.put_item(TableName=table, Item={**key, "text": {"S": "ü" * 500}})
    with FaultProxy(dynamodb_endpoint) as proxy:
        through = DynamoDBConnection(endpoint_url=proxy.endpoint_url, max_attempts=2)
        proxy.on("GetItem", fault=TRUNCATE, times=None)
        with pytest.raises(OperationalError, match="incomplete"):
            through.call("get_item", TableName=table, Key=key)
        through.close()
    direct.client.delete_table(TableName=table)
    direct.close()
