"""Helpers for testing event-sourced aggregates: given/when/then and value strategies.

Needs hypothesis, a development dependency (``pip install hypothesis``).

A given/when/then test of an aggregate reads::

    outcome = given(placed, item_added).when(lambda order: order.confirm())
    (confirmed,) = outcome.then(Order.OrderConfirmed)

    given(placed).when(lambda order: order.confirm()).then_rejected(
        OrderError, match="at least one line"
    )
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Generic, TypeVar

from eventsourcing.application import project_aggregate
from eventsourcing.domain import BaseAggregate, DomainEventProtocol

try:
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - depends on the environment
    msg = "ledger.testing needs hypothesis: pip install hypothesis"
    raise ImportError(msg) from error

__all__ = [
    "Outcome",
    "Scenario",
    "aware_datetimes",
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
