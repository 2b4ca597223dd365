"""The one place ledger touches ``eventsourcing``'s private names.

``eventsourcing`` 9.5 offers no public way to ask these questions; keeping
every such use here means an upgrade has one module to check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from eventsourcing import utils

if TYPE_CHECKING:
    from eventsourcing.utils import Environment


def is_registered_topic(topic: str) -> bool:
    """Return True if ``topic`` (or its module) was registered or resolved before.

    Looks in ``eventsourcing.utils._topic_cache``, which holds topics given to
    ``register_topic`` and those already resolved: so answering imports
    nothing.
    """
    cache: Mapping[str, object] = utils._topic_cache
    module_name = topic.partition(":")[0]
    return topic in cache or module_name in cache


def projection_environment(name: str, env: Mapping[str, str] | None) -> Environment:
    """Return the environment ``eventsourcing``'s ProjectionRunner gives a view.

    ``os.environ`` updated with ``env``, named after the projection (so keys
    may be prefixed with its name), from the runner's private
    ``_construct_env``: a view opened by ledger is configured exactly as one
    the runner opens.
    """
    from eventsourcing.projection import BaseProjectionRunner  # noqa: PLC0415

    return BaseProjectionRunner._construct_env(name, dict(env) if env else None)
