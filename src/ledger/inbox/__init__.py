"""The inbox: inbound messages applied once, through an application's keyed commands.

See :mod:`ledger.inbox.inbox` (routing, outcomes, dead letters, Step
Functions tasks), :mod:`ledger.inbox.messages` (sources and the keys derived
from them) and :mod:`ledger.inbox.sqs` (the Lambda handler and the
long-poll runner).
"""

from ledger.inbox.inbox import RETRIED_ERRORS, DeadLetter, Inbox, Outcome, RefusedError
from ledger.inbox.messages import (
    S3_OBJECT_CREATED,
    Envelope,
    InboundMessage,
    S3ObjectCreated,
    Source,
    envelopes_of,
)
from ledger.inbox.sqs import SqsRunner, handle_sqs_event, lambda_handler

__all__ = [
    "RETRIED_ERRORS",
    "S3_OBJECT_CREATED",
    "DeadLetter",
    "Envelope",
    "InboundMessage",
    "Inbox",
    "Outcome",
    "RefusedError",
    "S3ObjectCreated",
    "Source",
    "SqsRunner",
    "envelopes_of",
    "handle_sqs_event",
    "lambda_handler",
]
