"""Helpers for testing event-sourced aggregates: given/when/then, strategies, goldens.

Installed with the ``testing`` extra (``pip install 'ledger-dynamodb[testing]'``, which
brings hypothesis).

A given/when/then test of an aggregate reads::

    outcome = given(placed, item_added).when(lambda order: order.confirm())
    (confirmed,) = outcome.then(Order.OrderConfirmed)

    given(placed).when(lambda order: order.confirm()).then_rejected(
        OrderError, match="at least one line"
    )

:func:`check_golden_events` keeps each event class version's stored form in
a folder of the project's tests and fails when a class change breaks loading
it::

    def test_stored_events_still_load():
        check_golden_events(Path(__file__).parent / "golden", examples())
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar

from eventsourcing.application import project_aggregate
from eventsourcing.domain import BaseAggregate, DomainEventProtocol
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

try:
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - depends on the environment
    msg = (
        "ledger.testing needs the testing extra: pip install 'ledger-dynamodb[testing]'"
    )
    raise ImportError(msg) from error

__all__ = [
    "Outcome",
    "Scenario",
    "aware_datetimes",
    "check_golden_events",
    "given",
    "money",
    "replay",
]

TAggregate = TypeVar("TAggregate", bound=BaseAggregate[Any])


def replay(events: Iterable[DomainEventProtocol[Any]]) -> Any:
    """Rebuild an aggregate from its events, oldest first, with no snapshot."""
    aggregate = project_aggregate(None, events)
    if aggregate is None:
        msg = "no events to replay"
        raise ValueError(msg)
    return aggregate


def given(*events: DomainEventProtocol[Any]) -> Scenario[Any]:
    """Start a scenario from an aggregate's past events."""
    return Scenario(tuple(events))


@dataclass(frozen=True)
class Scenario(Generic[TAggregate]):
    """An aggregate's history, ready for a command."""

    history: tuple[DomainEventProtocol[Any], ...]

    def when(self, command: Callable[[TAggregate], object]) -> Outcome:
        """Run ``command`` on the aggregate the history builds."""
        aggregate: TAggregate = replay(self.history)
        try:
            command(aggregate)
        except Exception as error:  # noqa: BLE001 - the outcome carries it to then_rejected
            return Outcome(events=tuple(aggregate.collect_events()), error=error)
        return Outcome(events=tuple(aggregate.collect_events()), error=None)


@dataclass(frozen=True)
class Outcome:
    """What a command did: the events it recorded, or the error it raised."""

    events: tuple[DomainEventProtocol[Any], ...]
    error: Exception | None

    def then(self, *expected: type[object]) -> tuple[Any, ...]:
        """Assert the command recorded events of exactly these types; return them."""
        if self.error is not None:
            msg = f"expected events {_names(expected)}, but the command raised"
            raise AssertionError(msg) from self.error
        actual = tuple(type(event) for event in self.events)
        if len(actual) != len(expected) or not all(
            issubclass(a, e) for a, e in zip(actual, expected, strict=False)
        ):
            msg = f"expected events {_names(expected)}, got {_names(actual)}"
            raise AssertionError(msg)
        return self.events

    def then_rejected(
        self, error_type: type[Exception], match: str | None = None
    ) -> Exception:
        """Assert the command raised ``error_type`` and recorded nothing."""
        if self.error is None:
            msg = f"expected {error_type.__name__}, got events {_names(self.events)}"
            raise AssertionError(msg)
        if not isinstance(self.error, error_type):
            msg = f"expected {error_type.__name__}, got {self.error!r}"
            # A failed expectation, not a bad argument: pytest reports it as such.
            raise AssertionError(msg) from self.error  # noqa: TRY004
        if match is not None and not re.search(match, str(self.error)):
            msg = f"{self.error!r} does not match {match!r}"
            raise AssertionError(msg)
        if self.events:
            msg = f"rejected command still recorded {_names(self.events)}"
            raise AssertionError(msg)
        return self.error


def _names(items: Sequence[object]) -> list[str]:
    return [
        item.__qualname__ if isinstance(item, type) else type(item).__qualname__
        for item in items
    ]


def money(
    max_value: Decimal = Decimal(1_000_000), places: int = 2
) -> st.SearchStrategy[Decimal]:
    """Exact, finite, non-negative amounts with at most ``places`` decimals."""
    return st.decimals(
        min_value=Decimal(0),
        max_value=max_value,
        places=places,
        allow_nan=False,
        allow_infinity=False,
    )


def aware_datetimes() -> st.SearchStrategy[datetime]:
    """Timezone-aware datetimes at whole-minute UTC offsets, as JSON can carry."""
    offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda minutes: UTC if minutes == 0 else timezone(timedelta(minutes=minutes))
    )
    return st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=offsets,
    )


def check_golden_events(
    folder: Path,
    examples: Iterable[DomainEventProtocol[Any]],
    mapper: Mapper[Any] | None = None,
) -> list[Path]:
    """Record each example event's stored form once per class version; check all.

    ``examples`` holds an event (or snapshot) of each stored class. An
    example whose class version has no file in ``folder`` yet is recorded
    there as ``{topic}_v{class_version}.json`` (commit the files: they are
    the stored forms released); later examples of that version are not
    compared, so their values may change from run to run. Then every file
    in ``folder`` is checked against today's classes, and an
    ``AssertionError`` lists each one that fails:

    - a file at its class's current ``class_version`` must load as it did
      when recorded, and be stored again byte for byte: a field renamed,
      removed, retyped or added since then needs a new ``class_version`` and
      an upcaster;
    - a file of an older ``class_version`` must load (through the upcasters)
      as an instance of its class.

    ``mapper`` defaults to ledger's ``PydanticMapper`` with JSON. Returns
    the files recorded by this call.
    """
    from ledger.persistence import PydanticMapper  # noqa: PLC0415

    mapper = mapper or PydanticMapper(transcoder=JSONTranscoder())
    folder.mkdir(parents=True, exist_ok=True)
    recorded = []
    for example in examples:
        path = folder / _golden_name(type(example))
        if not path.exists():
            path.write_text(_golden(mapper, example))
            recorded.append(path)
    failures = [
        f"{path.name}: {failure}"
        for path in sorted(folder.glob("*.json"))
        if (failure := _golden_failure(mapper, path)) is not None
    ]
    if failures:
        msg = "stored events that no longer load as recorded:\n" + "\n".join(failures)
        raise AssertionError(msg)
    return recorded


def _golden_name(event_class: type[Any]) -> str:
    topic = get_topic(event_class).replace(":", ".")
    return f"{topic}_v{getattr(event_class, 'class_version', 1)}.json"


def _golden(mapper: Mapper[Any], example: DomainEventProtocol[Any]) -> str:
    stored = mapper.to_stored_event(example)
    golden = {
        "topic": stored.topic,
        "class_version": getattr(type(example), "class_version", 1),
        "originator_id": str(stored.originator_id),
        "originator_version": stored.originator_version,
        "state": stored.state.decode(),
        "loads_as": _dumped(mapper.to_domain_event(stored)),
    }
    return json.dumps(golden, indent=2, sort_keys=True) + "\n"


def _dumped(event: object) -> Any:
    dump: Callable[..., Any] | None = getattr(event, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    return json.loads(json.dumps(vars(event), default=str))


def _golden_failure(mapper: Mapper[Any], path: Path) -> str | None:
    """Say why a golden file no longer loads as recorded (None: it does)."""
    golden = json.loads(path.read_text())
    stored = StoredEvent(
        originator_id=golden["originator_id"],
        originator_version=golden["originator_version"],
        topic=golden["topic"],
        state=golden["state"].encode(),
    )
    try:
        event_class = resolve_topic(golden["topic"])
        event = mapper.to_domain_event(stored)
    except Exception as error:  # noqa: BLE001 - reported with the others
        return f"does not load ({type(error).__name__}: {error})"
    current = getattr(event_class, "class_version", 1)
    if golden["class_version"] != current:
        if isinstance(event, event_class):
            return None
        return f"loads as {type(event).__qualname__}, not {event_class.__qualname__}"
    advice = (
        f"{event_class.__qualname__} changed its stored form at class_version "
        f"{current}: give it class_version {current + 1} and an upcaster "
        f"(upcast_v{current}_v{current + 1}), or undo the change"
    )
    if _dumped(event) != golden["loads_as"]:
        return f"loads with other values than recorded. {advice}."
    if mapper.to_stored_event(event).state != stored.state:
        return f"is stored differently than recorded. {advice}."
    return None
