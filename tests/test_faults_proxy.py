"""The fault-injecting proxy, against DynamoDB Local, and what botocore makes of it.

Findings these tests pin down (boto3/botocore 1.44):

- botocore's default retry mode is ``standard`` with 4 attempts for DynamoDB,
  and connection errors are retried, so a single dropped response or cut
  connection is invisible to the caller, except that the request was sent twice.
- ``Config(retries={"max_attempts": 1})`` means one *retry* (two attempts);
  ``total_max_attempts=1`` is a single attempt.
- A lost response, a cut connection and an outage all reach the caller as
  ``botocore.exceptions.ConnectionClosedError``; a delay longer than the read
  timeout as ``botocore.exceptions.ReadTimeoutError``.
"""

import http.client
import http.server
import socket
import threading
import time
import uuid

import boto3
import botocore.config
import botocore.exceptions
import pytest
from faults import CUT, DELAY, LOSE_RESPONSE, SERVER_ERROR, FaultProxy

SINGLE_ATTEMPT = botocore.config.Config(
    retries={"total_max_attempts": 1, "mode": "standard"}
)
ONE_RETRY = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"})
DEADLINE = 10.0
"""Seconds within which anything that should happen promptly must have happened."""


@pytest.fixture
def proxy(dynamodb_endpoint):
    with FaultProxy(dynamodb_endpoint) as running:
        yield running


@pytest.fixture
def connect():
    """Make boto3 clients; close them (and their pooled sockets) afterwards."""
    made = []

    def make(endpoint_url, config=None, service="dynamodb"):
        client = boto3.client(
            service,
            endpoint_url=endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106 - DynamoDB Local takes any
            config=config,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def default_retries(monkeypatch):
    """botocore's own retry defaults, whatever the environment says."""
    for key in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    return botocore.config.Config()


@pytest.fixture
def direct(connect, dynamodb_endpoint):
    """A client talking to DynamoDB Local without the proxy: the ground truth."""
    return connect(dynamodb_endpoint)


@pytest.fixture
def table(direct, table_prefix):
    name = f"{table_prefix}items"
    direct.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def put(client, table, key, *, if_new=False):
    condition = {"ConditionExpression": "attribute_not_exists(pk)"} if if_new else {}
    client.put_item(TableName=table, Item={"pk": {"S": key}}, **condition)


def exists(client, table, key):
    found = client.get_item(
        TableName=table, Key={"pk": {"S": key}}, ConsistentRead=True
    )
    return "Item" in found


def put_if_new_in_transaction(client, table, key, token):
    client.transact_write_items(
        ClientRequestToken=token,
        TransactItems=[
            {
                "Put": {
                    "TableName": table,
                    "Item": {"pk": {"S": key}},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
        ],
    )


def eventually(condition):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_put_item_passes_through_and_is_logged(proxy, connect, direct, table):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)

    put(client, table, "a")

    assert exists(direct, table, "a")
    assert proxy.requests == [("PutItem", None)]


def test_lost_response_is_a_connection_error_after_the_write_happened(
    proxy, connect, direct, table
):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)
    proxy.on("PutItem", fault=LOSE_RESPONSE)

    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put(client, table, "a")

    assert exists(direct, table, "a")
    assert proxy.requests == [("PutItem", LOSE_RESPONSE)]


def test_cut_is_a_connection_error_and_nothing_is_written(
    proxy, connect, direct, table
):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)
    proxy.on("PutItem", fault=CUT)

    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put(client, table, "a")

    assert not exists(direct, table, "a")
    assert proxy.requests == [("PutItem", CUT)]


def test_server_error_is_dynamodbs_internal_server_error_and_nothing_is_written(
    proxy, connect, direct, table
):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)
    proxy.on("PutItem", fault=SERVER_ERROR)

    with pytest.raises(botocore.exceptions.ClientError) as raised:
        put(client, table, "a")

    assert raised.value.response["Error"]["Code"] == "InternalServerError"
    assert not exists(direct, table, "a")
    put(client, table, "b")  # the connection goes on serving
    assert exists(direct, table, "b")


def test_max_attempts_one_is_one_retry_so_a_single_cut_goes_unseen(
    proxy, connect, direct, table
):
    client = connect(proxy.endpoint_url, ONE_RETRY)
    proxy.on("PutItem", fault=CUT)

    put(client, table, "a")

    assert exists(direct, table, "a")
    assert proxy.requests == [("PutItem", CUT), ("PutItem", None)]


def test_default_retries_resend_after_a_lost_response(
    proxy, connect, direct, table, default_retries
):
    client = connect(proxy.endpoint_url, default_retries)
    proxy.on("PutItem", fault=LOSE_RESPONSE)

    put(client, table, "a")

    assert exists(direct, table, "a")
    assert proxy.requests == [("PutItem", LOSE_RESPONSE), ("PutItem", None)]


def test_default_retries_turn_a_lost_response_into_a_false_conflict(
    proxy, connect, direct, table, default_retries
):
    # The first attempt wrote the item; the retry finds it and its condition
    # fails, so the caller is told "conflict" about its own successful write.
    client = connect(proxy.endpoint_url, default_retries)
    proxy.on("PutItem", fault=LOSE_RESPONSE)

    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        put(client, table, "a", if_new=True)

    assert exists(direct, table, "a")
    assert proxy.requests == [("PutItem", LOSE_RESPONSE), ("PutItem", None)]


def test_default_retries_give_up_after_four_attempts_with_connection_closed(
    proxy, connect, table, default_retries
):
    client = connect(proxy.endpoint_url, default_retries)
    proxy.on("PutItem", fault=CUT, times=None)

    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put(client, table, "a")

    assert proxy.requests == [("PutItem", CUT)] * 4


def test_rule_applies_from_the_nth_request_of_its_operation(
    proxy, connect, direct, table
):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)
    rule = proxy.on("PutItem", nth=2, fault=CUT)

    put(client, table, "a")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put(client, table, "b")
    put(client, table, "c")

    assert [exists(direct, table, key) for key in "abc"] == [True, False, True]
    assert rule.fired == 1
    assert proxy.requests == [("PutItem", None), ("PutItem", CUT), ("PutItem", None)]


def test_predicate_rule_chooses_requests_by_body(proxy, connect, direct, table):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)
    proxy.on(lambda operation, index, body: b"poison" in body, fault=CUT, times=2)

    put(client, table, "a")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put(client, table, "poison")

    assert exists(direct, table, "a")
    assert not exists(direct, table, "poison")


def test_delay_holds_the_request_at_least_that_long(proxy, connect, direct, table):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)
    proxy.on("PutItem", fault=DELAY(0.5))

    started = time.monotonic()
    put(client, table, "a")
    elapsed = time.monotonic() - started

    assert 0.5 <= elapsed < 0.5 + DEADLINE
    assert exists(direct, table, "a")
    assert proxy.requests == [("PutItem", DELAY(0.5))]


def test_delay_beyond_the_read_timeout_is_a_read_timeout_yet_the_write_lands(
    proxy, connect, direct, table
):
    config = SINGLE_ATTEMPT.merge(botocore.config.Config(read_timeout=0.2))
    client = connect(proxy.endpoint_url, config)
    proxy.on("PutItem", fault=DELAY(0.6))

    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        put(client, table, "a")

    assert eventually(lambda: exists(direct, table, "a"))


def test_outage_fails_fast_writes_nothing_and_up_recovers(
    proxy, connect, direct, table
):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)
    put(client, table, "before")  # leaves a keep-alive connection in the pool
    proxy.down()

    started = time.monotonic()
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put(client, table, "during")
    failed_after = time.monotonic() - started
    proxy.up()
    put(client, table, "after")

    assert failed_after < 2.0
    assert not exists(direct, table, "during")
    assert exists(direct, table, "after")


def test_outage_with_default_retries_still_fails_fast(
    proxy, connect, table, default_retries
):
    client = connect(proxy.endpoint_url, default_retries)
    proxy.down()

    started = time.monotonic()
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put(client, table, "a")

    assert time.monotonic() - started < 2.0
    assert proxy.refused == 4


def test_timed_outage_ends_by_itself(proxy, connect, direct, table):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)

    started = time.monotonic()
    proxy.outage(1.0)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put(client, table, "during")
    assert proxy.wait_until_up(DEADLINE)
    put(client, table, "after")

    assert time.monotonic() - started >= 1.0
    assert not exists(direct, table, "during")
    assert exists(direct, table, "after")


def test_requests_on_one_keep_alive_connection_are_each_counted_and_named(
    proxy, connect, table
):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)

    client.describe_table(TableName=table)
    put(client, table, "a")
    client.get_item(TableName=table, Key={"pk": {"S": "a"}})
    client.delete_item(TableName=table, Key={"pk": {"S": "a"}})

    assert proxy.connections == 1
    assert proxy.requests == [
        ("DescribeTable", None),
        ("PutItem", None),
        ("GetItem", None),
        ("DeleteItem", None),
    ]


def test_streams_api_operations_are_named(proxy, connect):
    streams = connect(proxy.endpoint_url, SINGLE_ATTEMPT, service="dynamodbstreams")

    streams.list_streams()

    assert proxy.requests == [("ListStreams", None)]


class ChunkedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def chunked_upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ChunkedHandler)
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_chunked_responses_are_relayed_on_a_keep_alive_connection(chunked_upstream):
    with FaultProxy(chunked_upstream) as proxy:
        connection = http.client.HTTPConnection(
            "127.0.0.1", proxy.port, timeout=DEADLINE
        )
        try:
            bodies = []
            for operation in ("Query", "Scan"):
                connection.request(
                    "POST",
                    "/",
                    body=b"{}",
                    headers={"X-Amz-Target": f"DynamoDB_20120810.{operation}"},
                )
                bodies.append(connection.getresponse().read())
        finally:
            connection.close()

    assert bodies == [b"hello world"] * 2
    assert proxy.connections == 1
    assert proxy.requests == [("Query", None), ("Scan", None)]


def test_stop_closes_open_connections_and_ends_every_thread(dynamodb_endpoint):
    with FaultProxy(dynamodb_endpoint) as proxy:
        idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=DEADLINE)
        assert eventually(lambda: proxy.connections == 1)

    with idle:
        assert idle.recv(1) == b""
    assert not [t for t in threading.enumerate() if t.name.startswith("FaultProxy")]


# ClientRequestToken idempotency. AWS documents a TransactWriteItems client
# request token as valid for 10 minutes after the first request that uses it
# completes: a repeat with the same token and parameters succeeds without
# writing again, and the same token with other parameters is rejected with
# IdempotentParameterMismatchException. DynamoDB Local behaves the same way.


def test_transaction_replayed_with_its_token_after_a_lost_response_succeeds(
    proxy, connect, direct, table
):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)
    token = str(uuid.uuid4())
    proxy.on("TransactWriteItems", fault=LOSE_RESPONSE)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put_if_new_in_transaction(client, table, "a", token)

    put_if_new_in_transaction(client, table, "a", token)

    assert exists(direct, table, "a")
    assert proxy.requests == [
        ("TransactWriteItems", LOSE_RESPONSE),
        ("TransactWriteItems", None),
    ]


def test_transaction_resent_with_a_new_token_fails_its_condition(proxy, connect, table):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)
    proxy.on("TransactWriteItems", fault=LOSE_RESPONSE)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        put_if_new_in_transaction(client, table, "a", str(uuid.uuid4()))

    with pytest.raises(client.exceptions.TransactionCanceledException) as cancelled:
        put_if_new_in_transaction(client, table, "a", str(uuid.uuid4()))

    reasons = cancelled.value.response["CancellationReasons"]
    assert [reason["Code"] for reason in reasons] == ["ConditionalCheckFailed"]


def test_token_reused_with_other_parameters_is_a_mismatch(proxy, connect, table):
    client = connect(proxy.endpoint_url, SINGLE_ATTEMPT)
    token = str(uuid.uuid4())
    put_if_new_in_transaction(client, table, "a", token)

    with pytest.raises(client.exceptions.IdempotentParameterMismatchException):
        put_if_new_in_transaction(client, table, "b", token)


def test_default_retries_reuse_the_generated_token_so_a_lost_response_is_harmless(
    proxy, connect, direct, table, default_retries
):
    # botocore fills in ClientRequestToken once per call, before its retries.
    client = connect(proxy.endpoint_url, default_retries)
    proxy.on("TransactWriteItems", fault=LOSE_RESPONSE)

    client.transact_write_items(
        TransactItems=[
            {
                "Put": {
                    "TableName": table,
                    "Item": {"pk": {"S": "a"}},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
        ]
    )

    assert exists(direct, table, "a")
    assert proxy.requests == [
        ("TransactWriteItems", LOSE_RESPONSE),
        ("TransactWriteItems", None),
    ]
