"""Credentials DynamoDB refuses are a configuration error, not an outage.

The feeds wait out ``OperationalError`` (DynamoDB unavailable) for as long as
it takes; a refusal of the client's credentials or permissions would never
end by waiting, so it is ``InterfaceError`` and a feed stops on it.
"""

from __future__ import annotations

import threading

import pytest
from eventsourcing.persistence import InterfaceError

from ledger.dynamodb import DynamoDBConnection
from ledger.projections.streams import run_polls

REFUSED_KEY = "not-a-key!"
"""An access key id DynamoDB Local refuses (``UnrecognizedClientException``):
it takes only letters and digits."""


@pytest.fixture
def refused(dynamodb_endpoint, monkeypatch):
    """A connection whose credentials DynamoDB refuses."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", REFUSED_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    connection = DynamoDBConnection(endpoint_url=dynamodb_endpoint, max_attempts=2)
    yield connection
    connection.close()


def test_refused_credentials_are_an_interface_error_that_says_what_to_check(refused):
    with pytest.raises(InterfaceError, match=r"UnrecognizedClientException.*IAM"):
        refused.call("list_tables")


def test_run_polls_does_not_wait_out_refused_credentials(refused):
    stop = threading.Event()
    waited: list[Exception] = []

    def poll() -> int:
        refused.call("list_tables")
        return 0

    def unavailable(error: Exception, wait: float) -> None:
        waited.append(error)
        stop.set()  # a feed waiting it out would wait forever

    with pytest.raises(InterfaceError):
        run_polls(poll, stop, interval=0.05, on_unavailable=unavailable)

    assert waited == []


def test_no_region_and_no_endpoint_says_to_set_either(monkeypatch, tmp_path):
    # A new shell without the exports for DynamoDB Local: the error must point
    # at the endpoint too, not only at a region that would lead to AWS.
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))

    with pytest.raises(
        InterfaceError, match=r"AWS_DEFAULT_REGION.*DYNAMODB_ENDPOINT_URL"
    ):
        DynamoDBConnection(endpoint_url=None)
