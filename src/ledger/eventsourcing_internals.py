"""The one place ledger touches ``eventsourcing``'s private names.

``eventsourcing`` 9.5 offers no public way to ask these questions; keeping
every such use here means an upgrade has one module to check.
"""

from __future__ import annotations

from collections.abc import Mapping

from eventsourcing import utils


def is_registered_topic(topic: str) -> bool:
    """Return True if ``topic`` (or its module) was registered or resolved before.

    Looks in ``eventsourcing.utils._topic_cache``, which holds topics given to
    ``register_topic`` and those already resolved: so answering imports
    nothing.
    """
    cache: Mapping[str, object] = utils._topic_cache
    module_name = topic.partition(":")[0]
    return topic in cache or module_name in cache
