"""Which projector method handles which event class.

A handler declares its event classes either by the annotation of its event
parameter, as ``eventsourcing`` dispatches policies::

    @handles
    def placed(self, event: Order.OrderPlaced, models: Session) -> None: ...

(a union, ``Order.Shipped | Order.Cancelled``, handles each), or by naming
them, for handlers whose parameter is not annotated with event classes::

    @handles(Order.Shipped, Order.Cancelled)
    def closed(self, event: Any, models: Session) -> None: ...

A subclass inherits its bases' handlers and may replace them; an event is
handled by the handler of its class or of its nearest base. Declaring a
handler for a class that is not a domain event (``event: str``), or two
handlers of one class in one class body, is a ``TypeError`` when the
projector class is defined.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, overload

from eventsourcing.domain import DomainEvent, HasOriginatorIDVersion

Handler = Callable[[Any, Any, Any], None]
"""A projector method: ``(self, event, session) -> None``."""

_DECLARED = "_handles"
"""Attribute of a handler function: the event classes it was declared for."""
_ANNOTATED = "_handles_annotated"
"""Attribute of a handler function: its event classes are in its annotation."""


@overload
def handles(handler: Handler, /) -> Handler: ...


@overload
def handles(*event_classes: type[Any]) -> Callable[[Handler], Handler]: ...


def handles(*event_classes: Any) -> Any:
    """Declare a projector method as the handler of event classes.

    Bare (``@handles``), the classes are read from the annotation of the
    method's event parameter; with arguments, they are the classes named.
    """
    if len(event_classes) == 1 and inspect.isfunction(event_classes[0]):
        method = event_classes[0]
        setattr(method, _ANNOTATED, True)
        return method
    if not event_classes:
        raise TypeError(
            "@handles() names no event class: write @handles(EventClass, ...), or "
            "@handles with the event parameter annotated."
        )

    def decorate(method: Handler) -> Handler:
        method.__dict__.setdefault(_DECLARED, []).extend(event_classes)
        return method

    return decorate


def handlers_of(projector_class: type[Any]) -> dict[type[Any], Handler]:
    """Return every handler of a projector class (its bases' included), by class.

    Refuses (``TypeError``) two handlers of one event class in one class
    body (only one would ever run), and a handler of anything but a domain
    event class.
    """
    found: dict[type[Any], Handler] = {}
    for klass in reversed(projector_class.__mro__):
        own: dict[type[Any], Handler] = {}
        for attribute in vars(klass).values():
            for event_class in _event_classes(attribute, klass):
                other = own.setdefault(event_class, attribute)
                if other is not attribute:
                    raise TypeError(
                        f"{klass.__name__}.{other.__name__} and "
                        f"{klass.__name__}.{attribute.__name__} both handle "
                        f"{event_class.__qualname__}; only one would run. Keep "
                        "one handler per event class (call a shared function "
                        "from both if they share work)."
                    )
        found.update(own)
    return found


def _event_classes(attribute: Any, owner: type[Any]) -> list[type[Any]]:
    """Return the event classes a class attribute handles (none if not a handler)."""
    declared: list[type[Any]] = list(getattr(attribute, _DECLARED, ()))
    if getattr(attribute, _ANNOTATED, False):
        declared += _annotated(attribute, owner)
    for event_class in declared:
        if not _is_event_class(event_class):
            raise TypeError(
                f"handler {owner.__qualname__}.{attribute.__name__} is declared "
                f"for {event_class!r}, which is not a domain event class: name "
                "event classes (e.g. Order.OrderPlaced), in @handles(...) or in "
                "the annotation of its event parameter."
            )
    return declared


def _is_event_class(candidate: object) -> bool:
    """Return True for an aggregate's event class (ledger's or eventsourcing's)."""
    return isinstance(candidate, type) and issubclass(
        candidate, (HasOriginatorIDVersion, DomainEvent)
    )


def _annotated(method: Callable[..., Any], owner: type[Any]) -> list[type[Any]]:
    """Return the classes in the annotation of a handler's event parameter."""
    where = f"{owner.__qualname__}.{method.__name__}"
    parameters = list(inspect.signature(method).parameters)
    if len(parameters) < 2:
        raise TypeError(f"handler {where} takes no event parameter.")
    try:
        hints = typing.get_type_hints(method)
    except NameError as error:
        raise TypeError(
            f"the event annotation of handler {where} cannot be resolved ({error}): "
            "import the event class at module level, or name it: "
            "@handles(EventClass)."
        ) from None
    annotation = hints.get(parameters[1])
    classes: list[Any] = (
        list(typing.get_args(annotation))
        if isinstance(annotation, types.UnionType)
        or typing.get_origin(annotation) is typing.Union
        else [annotation]
    )
    # (typing.Any is a class since Python 3.11: refuse it and object by name.)
    if not classes or not all(
        isinstance(c, type) and c not in (Any, object) for c in classes
    ):
        raise TypeError(
            f"handler {where}: annotate its event parameter with the event "
            f"class(es) it handles (found {annotation!r}), or name them: "
            "@handles(EventClass)."
        )
    return classes
