"""Idempotent commands: applications whose commands take an idempotency key.

A command that may arrive twice (its answer was lost and the caller retries,
a queue redelivers it, a user presses twice, two saga runners send one step)
passes a key chosen by the caller, the same on every attempt. A keyed
command is answered by its first outcome, whatever happens in between. The
:func:`keyed_command` decorator does this for every command of an
application; the command itself only decides, and returns a
:class:`Decision` (its answer, and the aggregates to save)::

    class Orders(IdempotentApplication):
        @keyed_command()
        def confirm(self, order_id, *, idempotency_key=None) -> Decision[None]:
            order = self.repository.get(order_id)
            order.confirm()
            return Decision(None, order)

With a key, the decorator

* reads the key first: a repeat is answered from the first outcome without
  running the command's rules again (a second ``confirm`` would otherwise be
  refused as "already confirmed");
* saves the decision's aggregates and the key in one transaction, with a
  fingerprint of the command (its name and arguments);
* reads the key again when the command is refused (a domain error, a
  conflict, a decision that saves nothing) or its save finds the key taken:
  a twin delivery that was applied meanwhile makes this one done, answered
  like the first, not refused;
* raises :class:`IdempotencyKeyReusedError` when the key was first used by
  another command or other arguments (keys stored without a fingerprint, as
  before fingerprints were stored, are taken as the same command).

A save whose answer was lost raises
:class:`~ledger.dynamodb.client.AmbiguousWriteError`: retry the command with
the same key. Keys need ledger's DynamoDB store (see
:mod:`ledger.dynamodb.idempotency` for the storage and its costs).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast, overload
from uuid import UUID

import pydantic_core
from eventsourcing.persistence import (
    IntegrityError,
    PersistenceError,
    ProgrammingError,
    Recording,
)

from ledger.dynamodb.idempotency import RepeatedSaveError, SavedOutcome
from ledger.snapshots import SnapshottingApplication

__all__ = [
    "Decision",
    "IdempotencyKeyReusedError",
    "IdempotentApplication",
    "RepeatedSaveError",
    "SavedOutcome",
    "command_fingerprint",
    "keyed_command",
]

KEY_ARGUMENT = "idempotency_key"
"""The keyword argument that carries a command's idempotency key."""

A = TypeVar("A", bound="IdempotentApplication")
P = ParamSpec("P")
R = TypeVar("R")


class IdempotencyKeyReusedError(ValueError):
    """An idempotency key was first used for another command: nothing was done.

    A ``ValueError``, like an unusable key: the caller's arguments are wrong
    (one key for two commands), not the store; retrying cannot help, and
    code that retries or alarms on persistence errors must not see it.
    """

    def __init__(self, key: str, command: str, first: SavedOutcome) -> None:
        first_command = (first.fingerprint or "?").partition(":")[0]
        super().__init__(
            f"Idempotency key {key!r} was first used for {first_command}() with "
            f"other arguments than this {command}(): nothing was done. Give each "
            "new command a new key; send a key again only to repeat the same "
            "command with the same arguments."
        )
        self.key = key
        self.first = first


class Decision(Generic[R]):
    """What a keyed command decided: its answer, and the aggregates to save."""

    def __init__(self, answer: R, *aggregates: Any) -> None:
        self.answer = answer
        self.aggregates = aggregates
        """Aggregates whose pending events to save (none: the command was
        answered without a change, or refused without an error)."""


def command_fingerprint(command: str, arguments: Mapping[str, Any]) -> str:
    """Return ``command:sha256`` of a command's arguments, the same in any process.

    The arguments are encoded as JSON with sorted keys (mappings compare
    whatever their order, sets whatever their iteration order) after
    pydantic's conversion of UUIDs, decimals (their exact digits), dates,
    enums and models; Python's ``hash()`` would differ between processes.
    """
    encoded = json.dumps(
        _canonical(dict(arguments)),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    digest = hashlib.sha256(encoded.encode()).hexdigest()
    return f"{command}:{digest}"


def _canonical(value: Any) -> Any:
    if isinstance(value, str | bytes | int | float | bool | None | UUID):
        return pydantic_core.to_jsonable_python(value)
    if isinstance(value, Mapping):
        return {str(_canonical(key)): _canonical(item) for key, item in value.items()}
    if isinstance(value, Set):
        members = [_canonical(item) for item in value]
        return sorted(members, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, list | tuple | Iterator):
        return [_canonical(item) for item in value]
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError as error:
        raise TypeError(
            f"Cannot fingerprint a command argument of type {type(value).__name__}: "
            "keyed commands take plain data (str, numbers, Decimal, UUID, dates, "
            "enums, pydantic models, and lists and mappings of them)."
        ) from error


@overload
def keyed_command() -> Callable[
    [Callable[Concatenate[A, P], Decision[None]]], Callable[Concatenate[A, P], None]
]: ...


@overload
def keyed_command(
    answer: Callable[..., R],
) -> Callable[
    [Callable[Concatenate[A, P], Decision[R]]], Callable[Concatenate[A, P], R]
]: ...


def keyed_command(
    answer: Callable[..., R] | None = None,
) -> Callable[
    [Callable[Concatenate[A, P], Decision[R]]], Callable[Concatenate[A, P], R]
]:
    """Make a command of an :class:`IdempotentApplication` keyed (see the module).

    The command takes ``idempotency_key`` as a keyword and returns a
    :class:`Decision`; callers get the decision's answer. ``answer(app,
    first, **arguments)`` gives a repeat's answer from the first save's
    :class:`SavedOutcome` and the command's arguments (default: None, for
    commands that return nothing). One-shot iterators among the arguments
    are read into lists before the command runs (the fingerprint reads them).
    """

    def decorate(
        decide: Callable[Concatenate[A, P], Decision[R]],
    ) -> Callable[Concatenate[A, P], R]:
        signature = inspect.signature(decide)

        @functools.wraps(decide)
        def run(app: A, /, *args: P.args, **kwargs: P.kwargs) -> R:
            if kwargs.get(KEY_ARGUMENT) is None:
                # No key (it is keyword-only): no fingerprint to take, so the
                # arguments need no binding; a plain decide-and-save.
                return app.save_decision(decide(app, *args, **kwargs))
            bound = signature.bind(app, *args, **kwargs)
            bound.apply_defaults()
            for name, value in bound.arguments.items():
                if isinstance(value, Iterator):
                    bound.arguments[name] = list(value)
            arguments = dict(list(bound.arguments.items())[1:])
            key = arguments.pop(KEY_ARGUMENT, None)

            def repeat(first: SavedOutcome) -> R:
                if answer is None:
                    return cast("R", None)
                return answer(app, first, **arguments)

            return app.run_keyed(
                key,
                decide.__name__,
                arguments,
                lambda: decide(*bound.args, **bound.kwargs),
                repeat,
            )

        return run

    return decorate


class IdempotentApplication(SnapshottingApplication):
    """An application whose saves may carry an idempotency key.

    A :class:`~ledger.snapshots.SnapshottingApplication` (with no snapshot
    strategy unless given one), so its loads and saves take ledger's path
    rather than ``eventsourcing``'s: a load replays without a runtime
    protocol check per event and reads events without a ``StoredEvent``
    each, a save collects without two runtime protocol checks per aggregate.
    """

    def save_decision(self, decision: Decision[R]) -> R:
        """Save a decision's aggregates plainly (no key); return its answer."""
        if decision.aggregates:
            self.save(*decision.aggregates)
        return decision.answer

    def run_keyed(
        self,
        idempotency_key: str | None,
        command: str,
        arguments: Mapping[str, Any],
        decide: Callable[[], Decision[R]],
        repeat: Callable[[SavedOutcome], R],
    ) -> R:
        """Run a command once per key (the mechanism of :func:`keyed_command`).

        ``decide`` runs the command's rules; ``repeat`` answers from the
        first outcome. Without a key, the decision is saved plainly.
        """
        if idempotency_key is None:
            return self.save_decision(decide())
        fingerprint = command_fingerprint(command, arguments)
        first = self._first(idempotency_key, command, fingerprint)
        if first is not None:
            return repeat(first)
        try:
            decision = decide()
            if decision.aggregates:
                self._save_keyed(decision.aggregates, idempotency_key, fingerprint)
                return decision.answer
        except RepeatedSaveError as taken:
            # A twin took the key between the read above and this save.
            self._check_same(idempotency_key, command, fingerprint, taken.first)
            if not taken.first.events:  # the key vanished: nothing to answer
                raise
            return repeat(taken.first)
        except PersistenceError as error:
            if not isinstance(error, IntegrityError):
                raise  # the store failed: reading the key again cannot help
            return self._answer_or_raise(
                error, idempotency_key, command, fingerprint, repeat
            )
        except Exception as error:  # noqa: BLE001 - any refusal: see below
            return self._answer_or_raise(
                error, idempotency_key, command, fingerprint, repeat
            )
        # Answered without a change (e.g. "nothing to release"): a twin may
        # have made that change since the key was read.
        first = self._first(idempotency_key, command, fingerprint)
        return decision.answer if first is None else repeat(first)

    def _answer_or_raise(
        self,
        error: Exception,
        idempotency_key: str,
        command: str,
        fingerprint: str,
        repeat: Callable[[SavedOutcome], R],
    ) -> R:
        # A twin of this command (same key) may have been applied since the
        # key was read, which is why this one was refused: then it is done.
        first = self._first(idempotency_key, command, fingerprint)
        if first is None:
            raise error
        return repeat(first)

    def _first(
        self, idempotency_key: str, command: str, fingerprint: str
    ) -> SavedOutcome | None:
        first = self.first_outcome(idempotency_key)
        if first is not None:
            self._check_same(idempotency_key, command, fingerprint, first)
        return first

    @staticmethod
    def _check_same(
        idempotency_key: str, command: str, fingerprint: str, first: SavedOutcome
    ) -> None:
        if first.fingerprint is not None and first.fingerprint != fingerprint:
            raise IdempotencyKeyReusedError(idempotency_key, command, first)

    def _save_keyed(
        self, aggregates: Iterable[Any], idempotency_key: str, fingerprint: str
    ) -> None:
        self._check_store()
        # The base class's save, not ours: a taken key must raise, not return [].
        super().save(
            *aggregates,
            idempotency_key=idempotency_key,
            idempotency_fingerprint=fingerprint,
        )

    def save(
        self, *objs: Any, idempotency_key: str | None = None, **kwargs: Any
    ) -> list[Recording[UUID]]:
        """Save pending events; with a key used before, save nothing and return []."""
        if idempotency_key is None:
            return super().save(*objs, **kwargs)
        self._check_store()
        try:
            return super().save(*objs, idempotency_key=idempotency_key, **kwargs)
        except RepeatedSaveError:
            return []

    def save_once(
        self, *objs: Any, idempotency_key: str | None, **kwargs: Any
    ) -> SavedOutcome | None:
        """Save under a key; return None if saved now, else the first outcome.

        Without a key (None) it is a plain save. No fingerprint is stored:
        commands use :func:`keyed_command`.
        """
        if idempotency_key is None:
            super().save(*objs, **kwargs)
            return None
        self._check_store()
        try:
            super().save(*objs, idempotency_key=idempotency_key, **kwargs)
        except RepeatedSaveError as repeat:
            return repeat.first
        return None

    def first_outcome(self, idempotency_key: str | None) -> SavedOutcome | None:
        """Return what the first save with this key stored (None: no such save).

        One strongly consistent GetItem; None at once without a key.
        """
        if idempotency_key is None:
            return None
        self._check_store()
        outcome: SavedOutcome | None = self.recorder.saved_outcome(  # type: ignore[attr-defined]
            idempotency_key
        )
        return outcome

    def _check_store(self) -> None:
        if not hasattr(self.recorder, "saved_outcome"):
            raise ProgrammingError(
                f"Idempotency keys need ledger's DynamoDB store; "
                f"{type(self.recorder).__name__} does not keep them. Set "
                "PERSISTENCE_MODULE=ledger.dynamodb, or save without a key."
            )
