"""Which answers ledger takes for DynamoDB's whole answer (``incomplete_answer``).

The same check refuses answers cut short on the wire in
``tests/test_faults_truncated.py``; here each reason is named on a body of
its own, against botocore's own models of DynamoDB and DynamoDB Streams.
"""

import zlib

import pytest
from botocore.session import get_session

from ledger.dynamodb.client import incomplete_answer


@pytest.mark.parametrize(
    ("operation", "body", "reason"),
    [
        ("GetItem", b"", "not complete JSON"),
        ("GetItem", b'{"Item":{"k":{"S":"a"}', "not complete JSON"),
        ("GetItem", b"[]", "not a JSON object"),
        ("Query", b'{"Count":0}', "lacks Items"),
        ("BatchGetItem", b'{"UnprocessedKeys":{}}', "lacks Responses"),
        ("DescribeStream", b"{}", "lacks StreamDescription"),
    ],
)
def test_an_answer_that_is_not_whole_is_named_with_its_reason(operation, body, reason):
    service = "dynamodbstreams" if operation == "DescribeStream" else "dynamodb"
    model = get_session().get_service_model(service).operation_model(operation)

    found = incomplete_answer(model, {}, body)

    assert found is not None
    assert reason in found


@pytest.mark.parametrize(
    ("operation", "body"),
    [
        ("GetItem", b"{}"),  # no such item
        ("Query", b'{"Items":[],"Count":0,"ScannedCount":0}'),
        ("PutItem", b"{}"),
    ],
)
def test_a_whole_answer_is_accepted(operation, body):
    model = get_session().get_service_model("dynamodb").operation_model(operation)

    assert incomplete_answer(model, {"content-length": str(len(body))}, body) is None


def test_an_answer_shorter_than_its_content_length_or_checksum_is_not_whole():
    model = get_session().get_service_model("dynamodb").operation_model("GetItem")

    short = incomplete_answer(model, {"content-length": "24"}, b"{}")
    corrupt = incomplete_answer(model, {"x-amz-crc32": "1"}, b"{}")

    assert short is not None
    assert "2 of its 24 bytes" in short
    assert corrupt is not None
    assert "x-amz-crc32" in corrupt


def test_an_answer_matching_its_checksum_is_whole_without_parsing_it_again():
    model = get_session().get_service_model("dynamodb").operation_model("Query")
    body = b'{"Items":[],"Count":0,"ScannedCount":0}'

    found = incomplete_answer(model, {"x-amz-crc32": str(zlib.crc32(body))}, body)

    assert found is None
