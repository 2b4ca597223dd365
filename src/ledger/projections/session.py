"""The unit of work through which handlers read and write read models.

A :class:`Session` caches what it reads, holds what handlers write, and
commits the writes and the tracking position to its view together. Items it
writes without having read them are read in one request before the commit
(:meth:`ReadModelView.load_many`: a BatchGetItem on DynamoDB), for their
revisions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, TypeVar, cast

from eventsourcing.persistence import Tracking

from ledger.projections.models import ParkedEvent, ReadModel
from ledger.projections.views import ItemWrite, ReadModelView, StoredItem

TModel = TypeVar("TModel", bound=ReadModel)

Savepoint = tuple[dict[str, ReadModel | None], Tracking | None, int]
"""A session's pending state: its writes, its tracking and the events applied."""

MAX_COMMIT_ATTEMPTS = 20
"""Attempts at one event whose commit keeps meeting concurrent writers."""


class Session:
    """A unit of work over a view: reads (cached), writes, and tracking to commit.

    Reads see the session's own writes.
    """

    splittable: ClassVar[bool] = True
    """True if a projector may commit this session part way through applying
    one event (a gap fill or a redrive longer than one commit holds) when it
    held nothing pending before. A session whose writes reach the view some
    other way (a rebuild's flushes) says False."""

    def __init__(self, view: ReadModelView, *, total_order: bool = False) -> None:
        self.view = view
        self.total_order = total_order
        """True if the events come in a total order (the application sequence,
        the index) to a view that keeps one position
        (:meth:`ReadModelView.keeps_one_position`): no position per aggregate
        is read or written, and parked aggregates are known from one Query of
        the dead letters (:meth:`parked_event`)."""
        self._parked_keys: set[str] | None = None
        """Keys of the dead letters read by :meth:`parked_event` (None: not yet)."""
        self.loaded: dict[str, StoredItem | None] = {}
        self.models: dict[str, ReadModel | None] = {}
        self.writes: dict[str, ReadModel | None] = {}
        self.tracking: Tracking | None = None
        self.applied = 0
        """Events applied since the last commit (for its report)."""
        self._bodies: dict[str, tuple[ReadModel, str]] = {}
        """JSON of written models, kept while the model under the key is the same."""

    def _stored(self, key: str) -> StoredItem | None:
        if key not in self.loaded:
            if self._known_absent(key):
                return None
            self.loaded[key] = self.view.load(key)
        return self.loaded[key]

    def _known_absent(self, key: str) -> bool:
        """Return True if ``key`` is a dead letter's known not to exist (no read)."""
        # Every dead letter was read: one not among them is absent.
        return (
            self._parked_keys is not None
            and ParkedEvent.key_of(key) is not None
            and key not in self._parked_keys
        )

    def parked_event(self, aggregate_id: str) -> ParkedEvent | None:
        """Return the dead letter an aggregate waits behind, or None.

        The first call reads every dead letter of the view (one Query on
        DynamoDB) and caches them; later calls read nothing, and see what
        this session parks or releases.
        """
        if self._parked_keys is None:
            keys: set[str] = set()
            for stored in self.view.parked_items():
                parked = ParkedEvent.model_validate_json(stored.body)
                key = ParkedEvent.storage_key(parked.aggregate_id)
                keys.add(key)
                self.loaded.setdefault(key, stored)
            self._parked_keys = keys
        return self.get(ParkedEvent, aggregate_id)

    def _key(self, model_type: type[ReadModel], key: object) -> str:
        self.view.claim(model_type)
        return model_type.storage_key(key)

    def get(self, model_type: type[TModel], key: object) -> TModel | None:
        """Return the read model of this type and key, or None.

        Refuses (``ProgrammingError``) a class whose type name another class
        already used with this view.
        """
        storage_key = self._key(model_type, key)
        if storage_key in self.writes:
            return cast("TModel | None", self.writes[storage_key])
        if storage_key not in self.models:
            stored = self._stored(storage_key)
            self.models[storage_key] = (
                None if stored is None else model_type.model_validate_json(stored.body)
            )
        return cast("TModel | None", self.models[storage_key])

    def put(self, model: ReadModel) -> None:
        """Store a read model (replacing the one under its key)."""
        self.view.claim(type(model))
        self.writes[model.own_key()] = model

    def delete(self, model_type: type[ReadModel], key: object) -> None:
        """Remove the read model of this type and key, if there is one."""
        self.writes[self._key(model_type, key)] = None

    def pending_actions(self) -> int:
        """Return how many actions committing now would take."""
        return len(self.writes) + (self.tracking is not None)

    def pending_bytes(self) -> int:
        """Return the bytes of keys and bodies committing now would write."""
        return sum(
            len(key) + (0 if model is None else len(self._body(key, model)))
            for key, model in self.writes.items()
        )

    def sizes_written_since(self, savepoint: Savepoint) -> dict[str, int]:
        """Return each key written since ``savepoint`` with its bytes and body's."""
        before = savepoint[0]
        return {
            key: len(key) + (0 if model is None else len(self._body(key, model)))
            for key, model in self.writes.items()
            if key not in before or before[key] is not model
        }

    def is_over(self) -> bool:
        """Return True if committing now would overfill one of the view's commits."""
        return (
            self.pending_actions() > self.view.max_actions
            or self.pending_bytes() > self.view.max_bytes
        )

    def fit(
        self, change: Callable[[Session], object], flush: Callable[[], None] | None
    ) -> None:
        """Make ``change``; if that overfills one commit, ``flush`` first.

        ``flush`` commits what was pending before (None: nothing is). If
        ``change`` raises, the session is left as it was before it.
        """
        savepoint = self.savepoint()
        self._all_or_nothing(change)
        if flush is not None and self.is_over():
            self.restore(savepoint)
            flush()
            self._all_or_nothing(change)

    def _all_or_nothing(self, change: Callable[[Session], object]) -> None:
        savepoint = self.savepoint()
        try:
            change(self)
        except Exception:
            self.restore(savepoint)
            raise

    def _body(self, key: str, model: ReadModel) -> str:
        cached = self._bodies.get(key)
        if cached is not None and cached[0] is model:
            return cached[1]
        body = model.model_dump_json()
        self._bodies[key] = (model, body)
        return body

    def savepoint(self) -> Savepoint:
        """Return the session's pending state, to restore after a failed handler."""
        return dict(self.writes), self.tracking, self.applied

    def restore(self, savepoint: Savepoint) -> None:
        """Undo everything done since ``savepoint``."""
        self.writes, self.tracking = dict(savepoint[0]), savepoint[1]
        self.applied = savepoint[2]

    def commit(self) -> None:
        """Write the pending writes and tracking in one commit, then clear them."""
        self._load_unread()
        writes: list[ItemWrite] = []
        for key, model in self.writes.items():
            stored = self._stored(key)
            revision = 0 if stored is None else stored.revision
            if model is None and stored is None:
                continue
            body = None if model is None else self._body(key, model)
            writes.append(ItemWrite(key, body, revision))
        if not writes and self.tracking is None:
            return
        self.view.commit(writes, self.tracking)
        for write in writes:
            self.loaded[write.key] = (
                None
                if write.body is None
                else StoredItem(write.body, write.expected_revision + 1)
            )
            self.models[write.key] = self.writes[write.key]
        self.writes.clear()
        self._bodies.clear()
        self.tracking = None
        self.applied = 0

    def _load_unread(self) -> None:
        """Read, in one request, the items to be written that were never read."""
        unread = [
            key
            for key in self.writes
            if key not in self.loaded and not self._known_absent(key)
        ]
        if len(unread) > 1:
            self.loaded.update(self.view.load_many(unread))

    def forget(self) -> None:
        """Drop the cache and pending work (after another writer got in first)."""
        self._parked_keys = None
        self.loaded.clear()
        self.models.clear()
        self.writes.clear()
        self._bodies.clear()
        self.tracking = None
        self.applied = 0


__all__ = ["MAX_COMMIT_ATTEMPTS", "Savepoint", "Session"]
