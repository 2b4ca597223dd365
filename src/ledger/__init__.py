"""ledger: event sourcing and CQRS for Python, with Amazon DynamoDB as the event store.

ledger is a persistence module and a set of extensions for ``eventsourcing``:
select DynamoDB with ``PERSISTENCE_MODULE=ledger.dynamodb``.
"""

__version__ = "0.1.0"
