"""Where consumers keep their one position."""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import IntegrityError, Tracking


class TrackingCheckpoint:
    """A position kept in an application's tracking table, under a name.

    ``insert_tracking`` only moves a position forward, so of two runners
    saving at once, one moves it and the other is told it raced.
    """

    def __init__(self, recorder: Any, name: str) -> None:
        """Keep the position named ``name`` in ``recorder``'s tracking table."""
        self.recorder = recorder
        self.name = name

    def load(self) -> int:
        """Return the position (0: none), read strongly consistently."""
        return int(self.recorder.max_tracking_id(self.name) or 0)

    def save(self, position: int, expected: int) -> bool:
        """Move the position forward to ``position``; False if it was there already."""
        del expected  # the tracking table's condition is "only forward"
        try:
            self.recorder.insert_tracking(Tracking(self.name, position))
        except IntegrityError:
            return False
        return True
