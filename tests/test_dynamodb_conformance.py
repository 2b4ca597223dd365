"""eventsourcing's own persistence and application suites, run on DynamoDB Local.

Where a DynamoDB limit forces a deviation, only that is overridden, with the
reason beside it; the limit itself is tested as an explicit error in
``test_dynamodb_store.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ProcessRecorder,
    StoredEvent,
    TrackingRecorder,
)

# Imported as modules so that pytest does not collect the suites' bases.
from eventsourcing.tests import application as application_suites
from eventsourcing.tests import persistence as suites
from eventsourcing.utils import Environment

from ledger.dynamodb import (
    DynamoDBAggregateRecorder,
    DynamoDBApplicationRecorder,
    DynamoDBFactory,
    DynamoDBProcessRecorder,
    DynamoDBTrackingRecorder,
)
from ledger.dynamodb.limits import MAX_TRANSACTION_ACTIONS

# An application save is one transaction: its events, one notification batch
# item and the sequence item (and a tracking item for process recorders).
MAX_EVENTS_PER_APPLICATION_SAVE = MAX_TRANSACTION_ACTIONS - 2


class OnDynamoDB:
    """Gives each test a factory of its own, on fresh tables of DynamoDB Local."""

    factory: DynamoDBFactory

    @pytest.fixture(autouse=True)
    def _dynamodb_factory(
        self, dynamodb_endpoint: str, table_prefix: str
    ) -> Iterator[None]:
        self.factory = DynamoDBFactory(
            Environment(
                "ledger_test",
                {
                    "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
                    "DYNAMODB_TABLE_PREFIX": table_prefix,
                    "DYNAMODB_EVENTS_STREAM": "no",  # faster on DynamoDB Local
                },
            )
        )
        yield
        self.factory.close()


class TestDynamoDBAggregateRecorderForEvents(
    OnDynamoDB, suites.AggregateRecorderTestCase
):
    def create_recorder(self) -> AggregateRecorder:
        return self.factory.aggregate_recorder("events")


class TestDynamoDBAggregateRecorderForSnapshots(
    OnDynamoDB, suites.AggregateRecorderTestCase
):
    def create_recorder(self) -> AggregateRecorder:
        return self.factory.aggregate_recorder("snapshots")


class TestDynamoDBApplicationRecorder(OnDynamoDB, suites.ApplicationRecorderTestCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory.application_recorder()

    @pytest.mark.slow
    def test_concurrent_no_conflicts(self, initial_position: int = 0) -> None:  # noqa: PT028 - the suite's signature
        # Deviation: the suite's version saves 100 events at once, and one
        # DynamoDB transaction holds at most 100 actions, two of which a save
        # needs for the sequence. Same shape (10 writers, 100 saves, 2 readers)
        # at the largest save DynamoDB allows; the gap-free check is ours.
        recorder = self.create_recorder()
        errors: list[BaseException] = []
        stop_reading = threading.Event()

        def write() -> None:
            originator_id = self.new_originator_id()
            recorder.insert_events(
                [
                    StoredEvent(originator_id, version, "topic", b"state")
                    for version in range(MAX_EVENTS_PER_APPLICATION_SAVE)
                ]
            )

        def read() -> None:
            while not stop_reading.is_set():
                try:
                    recorder.select_notifications(
                        start=initial_position, limit=10, inclusive_of_start=False
                    )
                except Exception as error:  # noqa: BLE001 - reported below
                    errors.append(error)
                    return

        readers = [threading.Thread(target=read) for _ in range(2)]
        for reader in readers:
            reader.start()
        with ThreadPoolExecutor(max_workers=10) as executor:
            for future in [executor.submit(write) for _ in range(100)]:
                future.result()
        stop_reading.set()
        for reader in readers:
            reader.join()

        assert errors == []
        total = 100 * MAX_EVENTS_PER_APPLICATION_SAVE
        assert recorder.max_notification_id() == total
        ids = [n.id for n in recorder.select_notifications(start=1, limit=total)]
        assert ids == list(range(1, total + 1))

    def test_insert_subscribe(self) -> None:
        # The suite leaves subscribing optional; ledger implements it.
        self.optional_test_insert_subscribe()

    @pytest.mark.slow
    def test_concurrent_throughput(self) -> None:
        super().test_concurrent_throughput()


class TestDynamoDBNonInterleavingNotificationIDs(
    OnDynamoDB, suites.NonInterleavingNotificationIDsBaseCase
):
    # Deviation: the suite saves 1,000 events at once; one DynamoDB transaction
    # holds at most 100 actions (see test_dynamodb_store.py for that error).
    insert_num = MAX_EVENTS_PER_APPLICATION_SAVE

    def create_recorder(self) -> ApplicationRecorder:
        return self.factory.application_recorder()


class TestDynamoDBTrackingRecorder(OnDynamoDB, suites.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.factory.tracking_recorder()


class TestDynamoDBProcessRecorder(OnDynamoDB, suites.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()


class TestDynamoDBInfrastructureFactory(
    OnDynamoDB, suites.InfrastructureFactoryTestCase[DynamoDBFactory]
):
    @pytest.fixture(autouse=True)
    def _factory_env(self, dynamodb_endpoint: str, table_prefix: str) -> None:
        self.env = Environment(
            "ledger_test",
            {
                "PERSISTENCE_MODULE": "ledger.dynamodb",
                "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
                "DYNAMODB_TABLE_PREFIX": table_prefix,
                "DYNAMODB_EVENTS_STREAM": "no",  # faster on DynamoDB Local
            },
        )

    def expected_factory_class(self) -> type[DynamoDBFactory]:
        return DynamoDBFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return DynamoDBAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return DynamoDBApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return DynamoDBTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return CustomDynamoDBTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return DynamoDBProcessRecorder


class CustomDynamoDBTrackingRecorder(DynamoDBTrackingRecorder):
    """A subclass, to check the factory honours TRACKING_RECORDER_TOPIC."""


class TestDynamoDBExampleApplication(application_suites.ExampleApplicationTestCase):
    expected_factory_topic = "ledger.dynamodb.factory:DynamoDBFactory"

    @pytest.fixture(autouse=True)
    def _environment(self, dynamodb_env: dict[str, str]) -> None:
        """The suite's application reads os.environ; dynamodb_env sets it."""
