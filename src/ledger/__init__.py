"""ledger: event sourcing and CQRS for Python, with Amazon DynamoDB as the event store.

ledger is a persistence module and a set of extensions for ``eventsourcing``:
select DynamoDB with ``PERSISTENCE_MODULE=ledger.dynamodb``.
"""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "ledger-dynamodb"
"""The name ledger is installed under (``pip install ledger-dynamodb``).

The package index's ``ledger`` is another project; the import package is
``ledger`` all the same.
"""

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree on the path, never installed
    __version__ = "0+unknown"
