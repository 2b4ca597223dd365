"""Idempotent commands: applications whose saves take an idempotency key.

A command that may arrive twice (its answer was lost and the caller retries,
a queue redelivers it, a user presses twice) passes a key chosen by the
caller, the same on every attempt. The first save with the key stores the
command's events and the key together; every later save with it stores
nothing. Commands read the key first, so a repeat returns the first outcome
without running the command's rules again (a second ``confirm`` would
otherwise be refused as "already confirmed")::

    class Orders(IdempotentApplication):
        def confirm(self, order_id, *, idempotency_key=None):
            if self.first_outcome(idempotency_key) is not None:
                return  # done before
            order = self.repository.get(order_id)
            order.confirm()
            self.save_once(order, idempotency_key=idempotency_key)

A save whose answer was lost raises
:class:`~ledger.dynamodb.client.AmbiguousWriteError`: retry the command with
the same key. Keys need ledger's DynamoDB store (see
:mod:`ledger.dynamodb.idempotency` for the storage and its costs).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import ProgrammingError, Recording

from ledger.dynamodb.idempotency import RepeatedSaveError, SavedOutcome

__all__ = ["IdempotentApplication", "RepeatedSaveError", "SavedOutcome"]


class IdempotentApplication(Application[UUID]):
    """An application whose saves may carry an idempotency key."""

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

        Without a key (None) it is a plain save.
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
