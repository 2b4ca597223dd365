"""eventsourcing's own suites, run on DynamoDB Local with ``DYNAMODB_ORDERING=indexed``.

The index is written after each save, by the indexer. So that the suites,
which read the sequence right after saving, test the index it writes, the
recorders here are a test-only wrapper: each save runs an in-process indexer
until the index holds the saved events, and returns their positions (which
the indexed recorder itself cannot: they do not exist yet when it returns).
Everything else is the indexed recorders' own, reading what the indexer
wrote; each override below says what the asynchronous index forces.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.domain import Aggregate
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
from eventsourcing.utils import Environment, get_topic

from ledger.dynamodb import (
    DynamoDBFactory,
    DynamoDBIndexedApplicationRecorder,
    DynamoDBIndexedProcessRecorder,
)
from ledger.indexer import Indexer
from tests import test_dynamodb_conformance as sequence_suites
from tests.indexed_support import index_until, indexed_env


class _CatchingUp:
    """Runs an in-process indexer after each save until it holds the save."""

    _indexer: Indexer | None = None
    _indexing = threading.Lock()

    def _index(
        self, recorder: DynamoDBIndexedApplicationRecorder, saved: Sequence[StoredEvent]
    ) -> list[int]:
        with self._indexing:  # one indexer, used by the suites' writer threads
            if self._indexer is None:
                self._indexer = Indexer(recorder)
            found = index_until(self._indexer, recorder, saved)
        return [found[str(e.originator_id), e.originator_version] for e in saved]


class CatchingUpApplicationRecorder(_CatchingUp, DynamoDBIndexedApplicationRecorder):
    """The indexed application recorder, indexing each save before returning."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        super().insert_events(stored_events, **kwargs)
        return self._index(self, stored_events) if stored_events else None


class CatchingUpProcessRecorder(_CatchingUp, DynamoDBIndexedProcessRecorder):
    """The indexed process recorder, indexing each save before returning."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        super().insert_events(stored_events, **kwargs)
        return self._index(self, stored_events) if stored_events else None


def catching_up_env(dynamodb_endpoint: str, table_prefix: str) -> dict[str, str]:
    return {
        **indexed_env(dynamodb_endpoint, table_prefix),
        "APPLICATION_RECORDER_TOPIC": get_topic(CatchingUpApplicationRecorder),
        "PROCESS_RECORDER_TOPIC": get_topic(CatchingUpProcessRecorder),
    }


class OnDynamoDBInIndexedOrdering:
    """Gives each test an indexed-ordering factory of its own, on fresh tables."""

    factory: DynamoDBFactory
    catching_up = True
    """Whether the recorders index each save before returning (the wrapper)."""

    @pytest.fixture(autouse=True)
    def _dynamodb_factory(
        self, dynamodb_endpoint: str, table_prefix: str
    ) -> Iterator[None]:
        make_env = catching_up_env if self.catching_up else indexed_env
        self.factory = DynamoDBFactory(
            Environment("ledger_test", make_env(dynamodb_endpoint, table_prefix))
        )
        yield
        self.factory.close()


class TestDynamoDBIndexedApplicationRecorderAsAggregateRecorder(
    OnDynamoDBInIndexedOrdering, suites.AggregateRecorderTestCase
):
    # The indexed recorder itself: as an aggregate recorder, it returns None.
    catching_up = False

    def create_recorder(self) -> AggregateRecorder:
        return self.factory.application_recorder()


class TestDynamoDBIndexedApplicationRecorder(
    OnDynamoDBInIndexedOrdering, suites.ApplicationRecorderTestCase
):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory.application_recorder()

    def test_insert_subscribe(self) -> None:
        # The suite leaves subscribing optional; the indexed recorder has it.
        self.optional_test_insert_subscribe()

    @pytest.mark.slow
    def test_concurrent_no_conflicts(self, initial_position: int = 0) -> None:  # noqa: PT028 - the suite's signature
        # The sequence ordering's deviation (98 events a save), indexed.
        sequence_suites.TestDynamoDBApplicationRecorder.test_concurrent_no_conflicts(
            self,  # type: ignore[arg-type]
            initial_position,
        )


class TestDynamoDBIndexedNonInterleavingNotificationIDs(
    OnDynamoDBInIndexedOrdering, suites.NonInterleavingNotificationIDsBaseCase
):
    # As in sequence ordering: at most 98 events a save. Here it is the
    # indexer that keeps each save's positions together.
    insert_num = sequence_suites.MAX_EVENTS_PER_APPLICATION_SAVE

    def create_recorder(self) -> ApplicationRecorder:
        return self.factory.application_recorder()


class TestDynamoDBIndexedProcessRecorderAsTrackingRecorder(
    OnDynamoDBInIndexedOrdering, suites.TrackingRecorderTestCase
):
    def create_recorder(self) -> TrackingRecorder:
        recorder = self.factory.process_recorder()
        assert isinstance(recorder, DynamoDBIndexedProcessRecorder)
        return recorder


class TestDynamoDBIndexedProcessRecorder(
    OnDynamoDBInIndexedOrdering, suites.ProcessRecorderTestCase
):
    def create_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()


class TestDynamoDBInfrastructureFactoryInIndexedOrdering(
    sequence_suites.TestDynamoDBInfrastructureFactory
):
    """The sequence ordering's factory suite, expecting the indexed recorders."""

    @pytest.fixture(autouse=True)
    def _factory_env(self, dynamodb_endpoint: str, table_prefix: str) -> None:
        self.env = Environment(
            "ledger_test", indexed_env(dynamodb_endpoint, table_prefix)
        )

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return DynamoDBIndexedApplicationRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return DynamoDBIndexedProcessRecorder


class TestDynamoDBExampleApplicationInIndexedOrdering(
    application_suites.ExampleApplicationTestCase
):
    expected_factory_topic = "ledger.dynamodb.factory:DynamoDBFactory"

    @pytest.fixture(autouse=True)
    def _environment(
        self, dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The suite's application reads os.environ; dynamodb_env sets it."""
        monkeypatch.setenv("DYNAMODB_ORDERING", "indexed")
        monkeypatch.setenv("DYNAMODB_EVENTS_STREAM", "yes")

    def test_example_application(self) -> None:
        # Deviation: the suite reads the notification log right after saving;
        # here the index is written after the saves, so the read waits for
        # an indexer (wait_indexed), then reads the same four notifications.
        accounts = application_suites.BankAccounts(env={"IS_SNAPSHOTTING_ENABLED": "y"})
        assert get_topic(type(accounts.factory)) == self.expected_factory_topic
        with pytest.raises(application_suites.BankAccounts.AccountNotFoundError):
            accounts.get_account(uuid4())
        account_id = accounts.open_account("Alice", "alice@example.com")
        for amount in ("10.00", "25.00", "30.00"):
            accounts.credit_account(account_id, Decimal(amount))
        assert accounts.get_balance(account_id) == Decimal("65.00")

        recorder = accounts.recorder
        assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
        saved = recorder.select_events(account_id)
        index_until(Indexer(recorder), recorder, saved)
        section = accounts.notification_log["1,10"]
        assert len(section.items) == 4
        assert [item.originator_version for item in section.items] == [1, 2, 3, 4]

        first = Aggregate.INITIAL_VERSION
        accounts.take_snapshot(account_id, version=first + 1)
        from_snapshot = accounts.repository.get(account_id, version=first + 2)
        assert (from_snapshot.version, from_snapshot.balance) == (
            first + 2,
            Decimal("35.00"),
        )
        latest = accounts.repository.get(account_id)
        assert (latest.version, latest.balance) == (first + 3, Decimal("65.00"))
