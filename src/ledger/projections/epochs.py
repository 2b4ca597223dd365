"""Crash-consistent flushes of a rebuild: epoch-stamped items with before-images.

A rebuild applies a window of events in memory, then *flushes*: it writes
every read-model item the window changed once (not once per event), then
commits the flush by moving the rebuild's checkpoint forward. A flush of
thousands of items cannot be one DynamoDB transaction (100 actions, 4 MB), so
a crash can leave a flush half written. What keeps that safe:

* Flushes are numbered. The ``rebuild`` control item holds ``epoch``, the
  last *committed* flush, beside the checkpoint; a flush ``e = epoch + 1``
  stamps each item it writes with ``epoch = e`` and, if the item existed
  before, its committed body as ``previous`` (its before-image). A deletion
  is written as a *tombstone*: an item with an epoch and no body.
* A flush commits with one conditional update of the control item
  (``epoch`` from ``e - 1`` to ``e``, the checkpoint, and in ``sequence``
  mode the tracking position in the same transaction).
* A resumed run first takes the rebuild over (a new owner token), then reads
  the version table once and puts back the before-image of every item whose
  epoch is past the committed one (or deletes it, if it had none). The read
  model is then exactly as of the checkpoint, and the resumed run applies
  the history from there: nothing lost, nothing applied twice.
* Every transaction of a flush also checks the owner token (a
  ``ConditionCheck`` on the control item), so a run that was taken over
  cannot write even one item after the take-over. (So the transactions of a
  flush go one at a time: DynamoDB cancels concurrent transactions that
  touch the same item.)
* Tombstones are deleted at the end of the rebuild, before readers switch.

The items' ``epoch`` and ``previous`` attributes are ignored by readers and
dropped by the first live write of each item. An item holds its before-image
too while it is rebuilt, so during a rebuild a read-model item that changes
across flushes must stay under half of DynamoDB's 400 KB item limit (it is
refused before sending, with that reason).

Memory is bounded: the session keeps the window's changes as JSON (the
rebuild flushes when they reach its ``flush_bytes``), the bodies of recently
used committed items up to ``cache_bytes``, and the set of keys that exist
(so a key never written needs no read); models live only while a page of
events is applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Tracking

from ledger.dynamodb.attributes import from_attributes
from ledger.dynamodb.client import CONDITION_FAILED, TransactionConflictError
from ledger.dynamodb.limits import (
    MAX_TRANSACTION_ACTIONS,
    item_size,
)
from ledger.projections import schema
from ledger.projections.dynamodb import DynamoDBView
from ledger.projections.session import Session
from ledger.projections.views import ConcurrentChangeError, StoredItem

DEFAULT_CACHE_BYTES = 32 * 1024 * 1024
"""Bodies of committed read-model items a rebuild keeps in memory between
flushes (reads it can skip)."""
_MAX_ITEMS_PER_TRANSACTION = MAX_TRANSACTION_ACTIONS - 1
"""Item writes per transaction: the last action checks the owner token."""
_MAX_BYTES_PER_TRANSACTION = 4 * 1024 * 1024 - 64 * 1024
"""DynamoDB's 4 MB per transaction, less room for the owner check."""


@dataclass(frozen=True, slots=True)
class FlushWrite:
    """One item of a flush: its new body (None: a tombstone) and before-image."""

    key: str
    body: str | None
    revision: int
    previous: str | None
    """The committed body before this flush (None: the item did not exist)."""


class RebuildSession(Session):
    """A rebuild's unit of work: reads committed state, holds a bounded cache.

    ``known`` is every key that exists in the version being built (committed);
    a key outside it is absent without a read. Reads of known keys that are
    not cached are one strongly consistent GetItem each.

    Changes wait in memory until the flush, as JSON (:meth:`stage`, after
    each page of events), not as models: a window can then span a whole read
    model of tens of megabytes, so an item changed by many events, however
    they interleave, is written once per flush.
    """

    splittable = False  # its changes reach the view only through the flushes

    def __init__(
        self,
        view: DynamoDBView,
        known: set[str],
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        super().__init__(view)
        self.known = known
        self.cache_bytes = cache_bytes
        self._cached_bytes = 0
        self.staged: dict[str, str | None] = {}
        """Bodies changed since the last flush (None: deleted)."""
        self.staged_bytes = 0

    def _stored(self, key: str) -> StoredItem | None:
        if key in self.staged:
            body = self.staged[key]
            return None if body is None else StoredItem(body, 0)
        return self._committed(key)

    def _committed(self, key: str) -> StoredItem | None:
        if key in self.loaded:
            return self.loaded[key]
        stored = self.view.load(key) if key in self.known else None
        self._cache(key, stored)
        return stored

    def _cache(self, key: str, stored: StoredItem | None) -> None:
        old = self.loaded.pop(key, None)
        if old is not None:
            self._cached_bytes -= len(old.body)
        self.loaded[key] = stored
        if stored is not None:
            self._cached_bytes += len(stored.body)

    def prime(self, key: str, stored: StoredItem) -> None:
        """Cache a committed item read elsewhere (a resume's Scan), within budget."""
        if self._cached_bytes + len(stored.body) <= self.cache_bytes:
            self._cache(key, stored)

    def stage(self) -> None:
        """Keep the models changed so far as JSON until the flush; drop models."""
        for key, model in self.writes.items():
            body = None if model is None else self._body(key, model)
            old = self.staged.get(key)
            self.staged_bytes += len(body or "") - len(old or "")
            self.staged[key] = body
        self.writes.clear()
        self.models.clear()
        self._bodies.clear()

    def freeze(self) -> list[FlushWrite]:
        """Return the window's writes and take them as this session's state.

        The cache then holds the bodies after the flush: the next window reads
        them, and the flush must commit before the next one writes.
        """
        self.stage()
        frozen: list[FlushWrite] = []
        for key, body in self.staged.items():
            base = self._committed(key)
            if body is None and base is None:
                continue
            revision = (0 if base is None else base.revision) + 1
            frozen.append(
                FlushWrite(key, body, revision, None if base is None else base.body)
            )
            if body is None:
                self.known.discard(key)
                self._cache(key, None)
            else:
                self.known.add(key)
                self._cache(key, StoredItem(body, revision))
        self.staged.clear()
        self.staged_bytes = 0
        return frozen

    def evict(self) -> None:
        """Drop the oldest cached bodies until the cache is within its budget."""
        if self._cached_bytes <= self.cache_bytes:
            return
        for key in list(self.loaded):
            stored = self.loaded.pop(key)
            if stored is not None:
                self._cached_bytes -= len(stored.body)
                if self._cached_bytes <= self.cache_bytes // 2:
                    return


class EpochWriter:
    """Writes flushes into one table version on behalf of one rebuild owner."""

    def __init__(self, view: DynamoDBView, owner: str) -> None:
        self.view = view
        self.owner = owner
        self.items_written = 0
        self.tombstones: set[str] = set()
        """Keys deleted in committed flushes: removed at the end."""

    # Flushing ------------------------------------------------------------------

    def flush(
        self,
        writes: Sequence[FlushWrite],
        epoch: int,
        checkpoint: dict[str, Any],
        tracking: Tracking | None,
    ) -> None:
        """Write a flush's items, then commit it; raise if the run was taken over."""
        # Puts are made a chunk at a time: a flush of many thousand items
        # would otherwise hold all their request dicts at once.
        puts = (
            self.view.stamped_put_action(
                w.key, w.body, w.revision, epoch=epoch, previous=w.previous
            )
            for w in writes
        )
        for chunk in self._chunks(puts):
            self._transact([*chunk, self._owner_check()])
            self.items_written += len(chunk)
        commit = [
            self.view.control.rebuild_commit_action(self.owner, epoch, checkpoint)
        ]
        if tracking is not None:
            commit.append(self.view.tracking_action(tracking))
        self._transact(commit)
        for write in writes:
            if write.body is None:
                self.tombstones.add(write.key)
            else:
                self.tombstones.discard(write.key)

    @staticmethod
    def _chunks(
        actions: Iterable[dict[str, Any]],
    ) -> Iterator[list[dict[str, Any]]]:
        chunk: list[dict[str, Any]] = []
        size = 0
        for action in actions:
            action_size = item_size(action["Put"]["Item"])
            if chunk and (
                len(chunk) == _MAX_ITEMS_PER_TRANSACTION
                or size + action_size > _MAX_BYTES_PER_TRANSACTION
            ):
                yield chunk
                chunk, size = [], 0
            chunk.append(action)
            size += action_size
        if chunk:
            yield chunk

    def _owner_check(self) -> dict[str, Any]:
        return self.view.control.rebuild_owner_check(self.owner)

    def _transact(self, actions: list[dict[str, Any]]) -> None:
        try:
            self.view.transact(actions)
        except TransactionConflictError as error:
            reasons = error.reasons
            failed = [
                i for i, r in enumerate(reasons) if r.get("Code") == CONDITION_FAILED
            ]
            if failed == [len(actions) - 1] or (
                failed == [0] and "Update" in actions[0]
            ):
                raise ConcurrentChangeError(
                    f"Another run took over the rebuild of {self.view.table_name}; "
                    "this one stops. Nothing more was written."
                ) from error
            raise

    # Resuming and finishing -----------------------------------------------------

    def restore(self, committed_epoch: int, session: RebuildSession) -> int:
        """Undo the uncommitted flush a crashed run left; return items restored.

        Reads the version (one Scan, and one Query of its dead letters), puts
        back the before-image of every item written after ``committed_epoch``
        (deleting those that had none), and tells ``session`` which keys exist.
        """
        undo: list[dict[str, Any]] = []
        for key, stored in self.view.stored_items():
            item = from_attributes(stored)
            epoch = int(item.get(schema.EPOCH, 0))
            revision = int(item.get(schema.REVISION, 0))
            if epoch > committed_epoch:
                previous = item.get(schema.PREVIOUS)
                undo.append(self.view.put_back_action(key, previous, revision))
                body = previous
            else:
                body = item.get(schema.BODY)
                if body is None and schema.EPOCH in item:
                    self.tombstones.add(key)
            if body is not None:
                restored = revision + 1 if epoch > committed_epoch else revision
                session.known.add(key)
                session.prime(key, StoredItem(body, restored))
        for start in range(0, len(undo), _MAX_ITEMS_PER_TRANSACTION):
            chunk = undo[start : start + _MAX_ITEMS_PER_TRANSACTION]
            self._transact([*chunk, self._owner_check()])
        return len(undo)

    def remove_tombstones(self) -> int:
        """Delete the tombstones of committed flushes; return how many."""
        keys = sorted(self.tombstones)
        for start in range(0, len(keys), _MAX_ITEMS_PER_TRANSACTION):
            deletes = [
                self.view.delete_action(key)
                for key in keys[start : start + _MAX_ITEMS_PER_TRANSACTION]
            ]
            self._transact([*deletes, self._owner_check()])
        self.tombstones.clear()
        return len(keys)
