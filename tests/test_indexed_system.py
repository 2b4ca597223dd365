"""An ``eventsourcing`` ``System`` whose leader and follower are in indexed ordering."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import JSONTranscoder
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System
from eventsourcing.tests.application import BankAccounts, EmailAddressAsStr

from ledger.dynamodb import DynamoDBIndexedApplicationRecorder
from ledger.indexer import Indexer
from tests.indexed_support import index_until


class Noted(Aggregate):
    """One upstream event, noted by the follower."""

    def __init__(self, source_id: UUID, version: int) -> None:
        self.source_id = source_id
        self.version_noted = version


class Notes(ProcessApplication[UUID]):
    """Notes each event of its leader: one aggregate per upstream event."""

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(EmailAddressAsStr())  # the leader's events use it

    def policy(
        self, domain_event: Any, processing_event: ProcessingEvent[UUID]
    ) -> None:
        processing_event.collect_events(
            Noted(domain_event.originator_id, domain_event.originator_version)
        )


@pytest.fixture
def runner(
    streamed: None, dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[SingleThreadedRunner[UUID]]:
    monkeypatch.setenv("DYNAMODB_ORDERING", "indexed")
    made: SingleThreadedRunner[UUID] = SingleThreadedRunner(
        System(pipes=[[BankAccounts, Notes]])
    )
    made.start()
    yield made
    made.stop()


def test_a_follower_processes_an_indexed_leaders_events_once(
    runner: SingleThreadedRunner[UUID],
) -> None:
    accounts = runner.get(BankAccounts)
    notes = runner.get(Notes)
    account = accounts.open_account("Alice", "alice@example.com")
    accounts.credit_account(account, 10)  # type: ignore[arg-type]
    recorder = accounts.recorder
    assert isinstance(recorder, DynamoDBIndexedApplicationRecorder)
    saved = recorder.select_events(account)
    index_until(Indexer(recorder), recorder, saved)

    # Saves return no notification ids, so the leader prompts no one: the
    # follower pulls (as a follower in another process would, polling).
    notes.pull_and_process(accounts.name)
    notes.pull_and_process(accounts.name)

    assert notes.recorder.max_tracking_id(accounts.name) == len(saved)
    follower = notes.recorder
    assert isinstance(follower, DynamoDBIndexedApplicationRecorder)
    noted = list(
        follower.connection.items("scan", TableName=follower.events_table_name)
    )
    assert len(noted) == len(saved)  # each upstream event processed once
