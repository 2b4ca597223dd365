"""Event metadata: correlation id, causation id and headers, set from a context.

Metadata says how an event came about, not what happened: which request or
conversation it belongs to (``correlation_id``), which event made a process
manager issue the command that recorded it (``causation_id``), and free
headers (``{"user": "ada"}``). Code sets it around commands, and every
:class:`ledger.domain.DomainEvent` triggered inside takes it when it is
created::

    with metadata(correlation_id=request_id, headers={"user": "ada"}):
        orders.confirm(order_id)  # its events carry the request id and user

A process manager reacting to an event wraps its commands in
:func:`caused_by`, so what it saves continues the chain: same correlation id
and headers as the event, and that event's id as causation id::

    with caused_by(confirmed):
        payments.charge(confirmed.originator_id)

A reply continues its request's chain by itself. An aggregate that asks the
outside world something (a payment gateway) and later records its answer
marks the asking event class :class:`Request` and the answering ones
:class:`Reply`; a reply is then caused by the aggregate's latest request,
with its correlation id and headers, whatever context the answer arrives in
(a webhook's, or none). No command has to remember the chain::

    class Requested(Aggregate.Created, Request): ...
    class Charged(Aggregate.Event, Reply): ...

The context is a :class:`contextvars.ContextVar`: it follows asyncio tasks,
and a new thread starts outside any context (unless started in a copy of
one, ``contextvars.copy_context().run``).

Outside any context an event is the first of its own chain: its
correlation id is its own id (:func:`event_id`), it has no causation id and
no headers. Events stored before ledger had metadata read the same way. A
context started with no correlation id, and not inside one that has it,
starts a new correlation (a random UUID), shared by every event of the
block. :class:`ledger.persistence.PydanticMapper` stores metadata beside the
event's state and reads it back, so projectors and process managers see
``event.metadata`` on the events they are given.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, Final, NoReturn, Self
from uuid import uuid4

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "RESTORED_METADATA",
    "EventMetadata",
    "Reply",
    "Request",
    "caused_by",
    "consequence_of",
    "current_metadata",
    "event_id",
    "metadata",
]

RESTORED_METADATA: Final = "ledger.metadata"
"""Key of pydantic's validation context under which a mapper gives an event
its stored metadata, so that reading an event never takes the metadata of the
reader's context: a mapping of the fields that differ from the default
(``correlation_id`` when not the event's own id, ``causation_id``,
``headers``), or ``None`` when the event stored none."""


class _ReadOnlyHeaders(dict[str, str]):
    """A dict that refuses changes: one context's headers are shared by its events."""

    def _refuse(self, *_: object, **__: object) -> NoReturn:
        msg = (
            "event metadata headers are read-only: set headers with "
            "ledger.metadata.metadata(headers=...)"
        )
        raise TypeError(msg)

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[type[Self], tuple[dict[str, str]]]:
        # copy, deepcopy and pickle would otherwise fill a new one item by item.
        return type(self), (dict(self),)


Headers = Annotated[dict[str, str], AfterValidator(_ReadOnlyHeaders)]


class EventMetadata(BaseModel):
    """How an event came about: its correlation, its cause and free headers.

    Immutable: the model is frozen and its headers refuse changes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    correlation_id: str = Field(min_length=1)
    """The conversation the event belongs to: shared by every event that
    follows from one request, across aggregates and process managers."""
    causation_id: str | None = Field(default=None, min_length=1)
    """The id (:func:`event_id`) of the event whose handling caused this one;
    ``None`` for an event caused by no event (a user's or a system's command)."""
    headers: Headers = Field(default_factory=_ReadOnlyHeaders)
    """Free string headers, such as ``{"user": "ada"}``."""


class Request:
    """Marks an event class as a request whose answer its aggregate records later.

    Mix it into an aggregate's event class (``class Requested(Aggregate.Created,
    Request)``): the aggregate keeps the metadata its replies will carry
    (:func:`consequence_of` its latest request), also through a snapshot.
    """


class Reply:
    """Marks an event class as the answer to its aggregate's latest :class:`Request`.

    A reply is caused by that request and takes its correlation id, in any
    context or none; the context's headers are kept, the request's win where
    both set one. A reply on an aggregate that recorded no request (or whose
    request was stored before it was marked) takes the context's metadata,
    as any event does.
    """


_current: ContextVar[EventMetadata | None] = ContextVar(
    "ledger_event_metadata", default=None
)


def event_id(event: Any) -> str:
    """Return an event's id: ``"{aggregate id}/{version}"``, stable and unique.

    Any event with ``originator_id`` and ``originator_version`` has one,
    including events stored before ledger had metadata, so an id never needs
    storing. Treat it as opaque; it is readable so an operator can find the
    event (``ledger events show {aggregate id}``, that version).
    """
    return f"{event.originator_id}/{event.originator_version}"


def current_metadata() -> EventMetadata | None:
    """Return the metadata in force here, or ``None`` outside any context."""
    return _current.get()


@contextmanager
def metadata(
    *,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Iterator[EventMetadata]:
    """Give the events created in the block this metadata; yield it.

    Inside another context, what is not given is inherited and headers are
    merged (the inner block's value wins for a header both set). With no
    correlation id given or inherited, the block starts a new correlation:
    a random UUID.
    """
    outer = _current.get()
    if correlation_id is None:
        correlation_id = outer.correlation_id if outer else str(uuid4())
    if causation_id is None and outer is not None:
        causation_id = outer.causation_id
    merged = {**(outer.headers if outer else {}), **(headers or {})}
    made = EventMetadata(
        correlation_id=correlation_id, causation_id=causation_id, headers=merged
    )
    token = _current.set(made)
    try:
        yield made
    finally:
        _current.reset(token)


def consequence_of(event: Any) -> EventMetadata:
    """Return the metadata of what ``event`` causes: its chain, it as cause.

    Its correlation id (its own id if it has none), its headers, and its id
    (:func:`event_id`) as causation id.
    """
    caused: EventMetadata | None = getattr(event, "metadata", None)
    if not isinstance(caused, EventMetadata):
        caused = EventMetadata(correlation_id=event_id(event))
    return EventMetadata(
        correlation_id=caused.correlation_id,
        causation_id=event_id(event),
        headers=caused.headers,
    )


@contextmanager
def caused_by(
    event: Any, *, headers: Mapping[str, str] | None = None
) -> Iterator[EventMetadata]:
    """Give the events created in the block metadata continuing ``event``'s chain.

    Their causation id is ``event``'s id, their correlation id ``event``'s
    (its own id if it has none), and their headers ``event``'s, merged over
    any outer context's and under ``headers``. ``event`` is any event with
    ``originator_id`` and ``originator_version``; one without ``metadata``
    (a plain ``eventsourcing`` event) starts the chain.
    """
    consequence = consequence_of(event)
    with metadata(
        correlation_id=consequence.correlation_id,
        causation_id=consequence.causation_id,
        headers={**consequence.headers, **(headers or {})},
    ) as made:
        yield made
