"""eventsourcing's own suites, run on DynamoDB Local with ``DYNAMODB_ORDERING=stream``.

Suites that apply: ``AggregateRecorderTestCase`` (the stream recorders store
events exactly as the aggregate recorder does), ``TrackingRecorderTestCase``
and ``ProcessRecorderTestCase`` (they save events with tracking and read
tracking back, never the sequence: tracking keys are opaque to the recorder,
whether an application's name or ``{application}#{aggregate id}``),
``InfrastructureFactoryTestCase`` (the stream recorder classes expected), and
``ExampleApplicationTestCase`` except for its one look at the notification log.

Suites that do not apply, because they test the application sequence, which
stream ordering does not keep (reading it raises ``SequenceDisabledError``):
``ApplicationRecorderTestCase`` (notification ids returned by saves,
``select_notifications``, ``max_notification_id``, ``subscribe``) and
``NonInterleavingNotificationIDsBaseCase`` (the order of notification ids).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from uuid import uuid4

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ProcessRecorder,
    TrackingRecorder,
)

# Imported as modules so that pytest does not collect the suites' bases.
from eventsourcing.tests import application as application_suites
from eventsourcing.tests import persistence as suites
from eventsourcing.utils import Environment, get_topic

from ledger.dynamodb import (
    DynamoDBFactory,
    DynamoDBStreamApplicationRecorder,
    DynamoDBStreamProcessRecorder,
    SequenceDisabledError,
)
from tests import test_dynamodb_conformance as sequence_suites


def stream_env(dynamodb_endpoint: str, table_prefix: str) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
        "DYNAMODB_TABLE_PREFIX": table_prefix,
        "DYNAMODB_ORDERING": "stream",
        "DYNAMODB_EVENTS_STREAM": "no",  # faster on DynamoDB Local
    }


class OnDynamoDBInStreamOrdering:
    """Gives each test a stream-ordering factory of its own, on fresh tables."""

    factory: DynamoDBFactory

    @pytest.fixture(autouse=True)
    def _dynamodb_factory(
        self, dynamodb_endpoint: str, table_prefix: str
    ) -> Iterator[None]:
        self.factory = DynamoDBFactory(
            Environment("ledger_test", stream_env(dynamodb_endpoint, table_prefix))
        )
        yield
        self.factory.close()


class TestDynamoDBStreamApplicationRecorder(
    OnDynamoDBInStreamOrdering, suites.AggregateRecorderTestCase
):
    def create_recorder(self) -> AggregateRecorder:
        return self.factory.application_recorder()


class TestDynamoDBStreamProcessRecorderAsAggregateRecorder(
    OnDynamoDBInStreamOrdering, suites.AggregateRecorderTestCase
):
    def create_recorder(self) -> AggregateRecorder:
        return self.factory.process_recorder()


class TestDynamoDBStreamProcessRecorderAsTrackingRecorder(
    OnDynamoDBInStreamOrdering, suites.TrackingRecorderTestCase
):
    def create_recorder(self) -> TrackingRecorder:
        recorder = self.factory.process_recorder()
        assert isinstance(recorder, DynamoDBStreamProcessRecorder)
        return recorder


class TestDynamoDBStreamProcessRecorder(
    OnDynamoDBInStreamOrdering, suites.ProcessRecorderTestCase
):
    def create_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()


class TestDynamoDBInfrastructureFactoryInStreamOrdering(
    sequence_suites.TestDynamoDBInfrastructureFactory
):
    """The sequence ordering's factory suite, expecting the stream recorders."""

    @pytest.fixture(autouse=True)
    def _factory_env(self, dynamodb_endpoint: str, table_prefix: str) -> None:
        self.env = Environment(
            "ledger_test", stream_env(dynamodb_endpoint, table_prefix)
        )

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return DynamoDBStreamApplicationRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return DynamoDBStreamProcessRecorder


class TestDynamoDBExampleApplicationInStreamOrdering(
    application_suites.ExampleApplicationTestCase
):
    expected_factory_topic = "ledger.dynamodb.factory:DynamoDBFactory"

    @pytest.fixture(autouse=True)
    def _environment(
        self, dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The suite's application reads os.environ; dynamodb_env sets it."""
        monkeypatch.setenv("DYNAMODB_ORDERING", "stream")

    def test_example_application(self) -> None:
        # Deviation: the suite's version reads the notification log
        # (``app.notification_log["1,10"]``), which is the application sequence,
        # and stream ordering keeps none. The same steps otherwise, with that
        # read checked to raise SequenceDisabledError instead.
        accounts = application_suites.BankAccounts(env={"IS_SNAPSHOTTING_ENABLED": "y"})
        assert get_topic(type(accounts.factory)) == self.expected_factory_topic
        with pytest.raises(application_suites.BankAccounts.AccountNotFoundError):
            accounts.get_account(uuid4())
        account_id = accounts.open_account("Alice", "alice@example.com")
        assert accounts.get_balance(account_id) == Decimal("0.00")
        for amount in ("10.00", "25.00", "30.00"):
            accounts.credit_account(account_id, Decimal(amount))
        assert accounts.get_balance(account_id) == Decimal("65.00")

        with pytest.raises(SequenceDisabledError):
            accounts.notification_log["1,10"]

        first = Aggregate.INITIAL_VERSION
        accounts.take_snapshot(account_id, version=first + 1)
        from_snapshot = accounts.repository.get(account_id, version=first + 2)
        assert (from_snapshot.version, from_snapshot.balance) == (
            first + 2,
            Decimal("35.00"),
        )
        accounts.take_snapshot(account_id)
        assert accounts.snapshots is not None
        snapshots = list(accounts.snapshots.get(account_id))
        assert [s.originator_version for s in snapshots] == [first + 1, first + 3]
        latest = accounts.repository.get(account_id)
        assert (latest.version, latest.balance) == (first + 3, Decimal("65.00"))
