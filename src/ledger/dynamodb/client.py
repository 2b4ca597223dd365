"""The DynamoDB client ledger uses, and the one place its errors are translated.

(Over 400 lines as one concept: every DynamoDB call goes through the
connection here, and each way a call can fail is translated beside it, so
none escapes untranslated.)

Every DynamoDB error reaches users as one of ``eventsourcing``'s persistence
errors, never as a bare botocore ``ClientError``:

=================================================  ===========================
DynamoDB / botocore says                           ledger raises
=================================================  ===========================
``ConditionalCheckFailedException``, a cancelled   ``IntegrityError`` (a
transaction whose reasons include a condition      conflict: never retried
failure                                            silently)
throttling, 5xx, connection errors (after          ``OperationalError``
botocore's retries), a transaction conflict
a write one of whose attempts lost its answer      ``AmbiguousWriteError`` (an
(connection closed or timed out while waiting),    ``OperationalError``: it
when the last attempt fails too                    may have been applied)
``ResourceNotFoundException`` (no such table)      ``TableNotFoundError`` (a
                                                   ``ProgrammingError``)
``ValidationException``, item too large            ``DataError``
botocore refuses a request's parameters before     ``ProgrammingError`` (a
sending it (``ParamValidationError``: a value of   request built wrong: no
the wrong type, a missing or unknown one)          retry or wait cures it)
no credentials, no region; credentials or         ``InterfaceError`` (no
permissions refused (``AccessDeniedException``,    feed waits it out)
``UnrecognizedClientException``...)
an answer with a success status but not whole      ``OperationalError`` (for a
(cut short, say), to the last attempt too          write: ``AmbiguousWriteError``)
=================================================  ===========================

Throttling and transient errors are retried by botocore's ``standard`` retry
mode (exponential backoff with jitter) before they are translated.

An answer with a success status whose body is not DynamoDB's whole answer (see
:func:`incomplete_answer`) is refused before botocore decides on a retry, so
it is retried like a 502 and, after the last attempt, raised: botocore alone
would read a body cut short as an empty answer (a GetItem as "no such item").
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Final, TypedDict, cast
from urllib.parse import urlparse

import boto3
import botocore.config
import botocore.exceptions
import botocore.session
from botocore.awsrequest import HeadersDict
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
)

from ledger.dynamodb.metering import Meter, Metering
from ledger.dynamodb.parsing import install_answer_parsing

if TYPE_CHECKING:  # the stubs are a development dependency only
    from botocore.awsrequest import AWSResponse
    from botocore.client import BaseClient
    from botocore.model import OperationModel
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient

CONDITION_FAILED = "ConditionalCheckFailed"
"""A cancellation reason: the action's condition was false (a conflict)."""
TRANSACTION_CONFLICT = "TransactionConflict"
"""A cancellation reason: another transaction was writing the item (retryable)."""
THROTTLED_REASONS = frozenset(
    {"ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)
"""Cancellation reasons that mean "slow down and try again"."""

_THROTTLING_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
    }
)


class CancellationReason(TypedDict, total=False):
    """Why DynamoDB cancelled one action of a transaction (one per action)."""

    Code: str
    """``"None"`` for an action that did not fail, else e.g. ``CONDITION_FAILED``."""
    Message: str
    Item: dict[str, AttributeValueTypeDef]
    """The item as it was, for an action asking for it on a failed condition
    (``ReturnValuesOnConditionCheckFailure``)."""


class TransactionConflictError(IntegrityError):
    """A transaction was cancelled because one of its conditions was false.

    ``reasons`` holds DynamoDB's cancellation reasons, one per action, in
    order (``{"Code": ..., "Item": ...}``), so a caller can tell which
    condition failed.
    """

    def __init__(self, message: str, reasons: list[CancellationReason]) -> None:
        super().__init__(message)
        self.reasons = reasons


class TransactionCancelledError(OperationalError):
    """A transaction was cancelled for reasons other than a condition failure.

    ``reasons`` holds DynamoDB's cancellation reasons, one per action.
    """

    def __init__(self, message: str, reasons: list[CancellationReason]) -> None:
        super().__init__(message)
        self.reasons = reasons


class TableNotFoundError(ProgrammingError):
    """DynamoDB has no such table (``ResourceNotFoundException``).

    Told apart from the other ``ProgrammingError``s (a request botocore
    refused to send, say) so that "there is none" is read only where
    DynamoDB said so. From the Streams API, the same code means no such
    stream or shard.
    """


class AmbiguousWriteError(OperationalError):
    """A write was sent but its answer never came: it may have been applied.

    Retry the command with the same idempotency key to apply it exactly once;
    without one, reload the aggregate to see whether it was.
    """


WRITE_OPERATIONS: Final = frozenset(
    {
        "put_item",
        "update_item",
        "delete_item",
        "transact_write_items",
        "batch_write_item",
    }
)
"""Operations whose lost answer leaves it unknown whether they were applied."""

_LOST_ANSWER = (
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ResponseStreamingError,
)
"""botocore's errors for a request that was sent but got no (whole) answer.
Failing to connect (``EndpointConnectionError``, ``ConnectTimeoutError``)
means nothing was sent."""


INCOMPLETE_ANSWER: Final = "IncompleteAnswer"
"""The error code of an answer that had a success status but not DynamoDB's
whole body (ledger's code, not DynamoDB's)."""

_INCOMPLETE_STATUS: Final = 502
"""The status an incomplete answer is given: botocore retries a 502 as
transient and raises it after the last attempt."""

_MEMBERS_ALWAYS_SENT: Final[Mapping[str, frozenset[str]]] = {
    "Query": frozenset({"Items"}),
    "Scan": frozenset({"Items"}),
    "BatchGetItem": frozenset({"Responses"}),
    "TransactGetItems": frozenset({"Responses"}),
    "DescribeTable": frozenset({"Table"}),
    "DescribeStream": frozenset({"StreamDescription"}),
}
"""Members every successful answer to these operations holds, and ledger
reads: an answer without them is not DynamoDB's. Members that may be absent
(GetItem's ``Item``, GetRecords' ``NextShardIterator``) cannot be checked."""

_REFUSED_CREDENTIALS_CODES: Final = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
    }
)
"""Codes for credentials or permissions DynamoDB refuses: no retry or wait
cures them, only a change of configuration."""

logger = logging.getLogger("ledger.dynamodb")

MAX_OUTAGE_WAIT: Final = 30.0
"""Longest wait, in seconds, between tries while DynamoDB is unavailable."""


def outage_wait(failures: int, first: float, longest: float = MAX_OUTAGE_WAIT) -> float:
    """Return the wait after ``failures`` failed tries in a row (1 or more).

    ``first`` for the first failure, doubling after each, at most ``longest``:
    what every feed waits between tries while DynamoDB is unavailable.
    """
    wait: float = min(longest, first * 2.0 ** min(failures - 1, 16))
    return wait


class Outage:
    """How a feed waits while DynamoDB is unavailable: one policy for every feed.

    After each try that failed with ``OperationalError`` (an outage, or
    throttling that outlasted the client's retries), :meth:`failed` returns
    the wait before the next try (``first``, doubling, at most ``longest``),
    logs it (the error's type only: never data) and tells ``on_unavailable(
    error, wait)``; it returns None instead once waiting would pass
    ``patience`` seconds in all (the caller then gives up and raises).
    :meth:`recovered` after a try that worked starts the doubling afresh.
    """

    def __init__(
        self,
        what: str,
        first: float,
        *,
        longest: float = MAX_OUTAGE_WAIT,
        patience: float | None = None,
        on_unavailable: Callable[[Exception, float], None] | None = None,
    ) -> None:
        """Wait ``first`` seconds after a first failure while doing ``what``."""
        self.what = what
        self.first = first
        self.longest = longest
        self.patience = patience
        self.on_unavailable = on_unavailable
        self.failures = 0
        self.waited = 0.0

    def failed(self, error: Exception) -> float | None:
        """Return how long to wait before trying again, or None: give up."""
        self.failures += 1
        wait = outage_wait(self.failures, self.first, self.longest)
        if self.patience is not None and self.waited + wait > self.patience:
            return None
        self.waited += wait
        logger.warning(
            "DynamoDB unavailable while %s; trying again in %.1fs",
            self.what,
            wait,
            extra={"failures": self.failures, "error": type(error).__name__},
        )
        if self.on_unavailable is not None:
            self.on_unavailable(error, wait)
        return wait

    def failed_before(self, error: Exception, deadline: float | None) -> float | None:
        """Return :meth:`failed`'s wait, or None if waiting would pass ``deadline``.

        ``deadline`` is a ``time.monotonic()`` (None: give up at once), for a
        caller whose time is bounded: a Lambda invocation, a drain.
        """
        left = 0.0 if deadline is None else max(0.0, deadline - time.monotonic())
        self.patience = self.waited + left
        return self.failed(error)

    def wait_out(self, error: Exception, deadline: float | None) -> None:
        """Sleep :meth:`failed_before`'s wait; raise ``error`` if none is left."""
        wait = self.failed_before(error, deadline)
        if wait is None:
            raise error
        time.sleep(wait)

    def recovered(self) -> None:
        """Note a try that worked: the next failure waits ``first`` again."""
        self.failures = 0


def was_retried(error: BaseException) -> bool:
    """Return True if botocore sent the failed request more than once.

    For a conditional write refused on a retry, the first attempt may have
    been applied and its answer lost.
    """
    cause = error.__cause__
    if not isinstance(cause, botocore.exceptions.ClientError):
        return False
    attempts = cause.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
    return bool(attempts)


def is_loopback(endpoint_url: str | None) -> bool:
    """Return True if an endpoint URL names this machine (a local DynamoDB)."""
    if not endpoint_url:
        return False
    host = urlparse(endpoint_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def incomplete_answer(
    operation: OperationModel, headers: Mapping[str, str], body: bytes
) -> str | None:
    """Return why a success answer's body is not DynamoDB's whole answer, or None.

    Not whole: shorter than its ``Content-Length`` (botocore reads a body
    cut short as if it were whole), unlike its ``x-amz-crc32`` checksum, or,
    when it has no checksum (DynamoDB sends one; a proxy may drop it), not
    one complete JSON object (botocore's parser reads such a body as an
    empty answer), or without a member DynamoDB always sends
    (``_MEMBERS_ALWAYS_SENT``). An empty body is whole only for an operation
    that answers nothing.
    """
    # botocore's headers are looked up case-insensitively already; lowering
    # every header of every answer would cost each call a dict.
    lowered = (
        headers
        if isinstance(headers, HeadersDict)
        else {name.lower(): value for name, value in headers.items()}
    )
    checksum = lowered.get("x-amz-crc32", "")
    if checksum.isdigit() and zlib.crc32(body) == int(checksum):
        # Exactly the bytes DynamoDB sent (a body cut short does not match):
        # its length and its JSON need no second look. Each header looked
        # up costs botocore a key object; DynamoDB's answers all have this one.
        return None
    length = lowered.get("content-length", "")
    if length.isdigit() and int(length) != len(body):
        return f"{len(body)} of its {length} bytes arrived"
    if checksum.isdigit():
        return "its body does not match its x-amz-crc32 checksum"
    output = operation.output_shape
    if not body and (output is None or not output.members):
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return f"its body of {len(body)} bytes is not complete JSON"
    if not isinstance(answer, dict):
        return "its body is not a JSON object"
    missing = _MEMBERS_ALWAYS_SENT.get(operation.name, frozenset()) - answer.keys()
    if missing:
        return f"it lacks {', '.join(sorted(missing))}"
    return None


def _refuse_incomplete_answer(
    response: tuple[AWSResponse, dict[str, Any]] | None = None,
    operation: OperationModel | None = None,
    attempts: int = 0,
    **_: Any,
) -> None:
    """Turn an attempt's incomplete success answer into a retryable error.

    Runs on ``needs-retry`` before botocore's retry handler, which then
    retries it (a 502 is transient) and, after the last attempt, raises it as
    a ``ClientError`` coded ``INCOMPLETE_ANSWER``.
    """
    # A needs-retry handler's answer is botocore's retry delay: none here.
    _refused(response, operation, attempts)


def _refused(
    response: tuple[AWSResponse, dict[str, Any]] | None,
    operation: OperationModel | None,
    attempts: int,
) -> bool:
    """Refuse an attempt's answer if incomplete (see above); return whether it was."""
    if response is None or operation is None:
        return False
    http_response, parsed = response
    if http_response.status_code >= 300:  # an error: botocore reads it itself
        return False
    reason = incomplete_answer(operation, http_response.headers, http_response.content)
    if reason is None:
        return False
    logger.warning(
        "DynamoDB's answer arrived incomplete",
        extra={"operation": operation.name, "attempt": attempts, "reason": reason},
    )
    metadata = parsed.get("ResponseMetadata", {})
    metadata["HTTPStatusCode"] = _INCOMPLETE_STATUS
    parsed.clear()  # nothing in it can be trusted
    parsed["Error"] = {
        "Code": INCOMPLETE_ANSWER,
        "Message": f"{operation.name}: {reason}",
    }
    parsed["ResponseMetadata"] = metadata
    http_response.status_code = _INCOMPLETE_STATUS
    return True


def refuse_incomplete_answers(client: BaseClient) -> None:
    """Make a DynamoDB or DynamoDB Streams client retry, then raise, incomplete answers.

    Every client ledger makes refuses them: a Streams client through this,
    :class:`DynamoDBConnection`'s client in its own handler of every attempt.
    """
    service = client.meta.service_model.service_id.hyphenize()
    # First, so botocore's retry handler sees the refusal.
    client.meta.events.register_first(
        f"needs-retry.{service}", _refuse_incomplete_answer
    )


class DynamoDBConnection:
    """A metered, retrying boto3 DynamoDB client shared by one factory's recorders."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        max_attempts: int = 10,
        max_pool_connections: int = 50,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        # A botocore session of its own, reading answers without botocore's
        # walk of their shapes (ledger.dynamodb.parsing).
        core = botocore.session.get_session()
        self.answer_parsing = install_answer_parsing(core)
        """What reads the client's answers (its session's parser factory)."""
        session = boto3.session.Session(botocore_session=core)
        region = region_name or session.region_name
        local = is_loopback(endpoint_url)
        if region is None:
            if not local:
                raise InterfaceError(
                    "No AWS region is configured for DynamoDB. Set DYNAMODB_REGION "
                    "or AWS_DEFAULT_REGION (for example us-east-1) for AWS; for "
                    "DynamoDB Local, set DYNAMODB_ENDPOINT_URL instead (for "
                    "example http://127.0.0.1:8000, as `ledger local` prints)."
                )
            region = "us-east-1"
        self._placeholder_credentials = local and session.get_credentials() is None
        """Whether to give the endpoint placeholder credentials: DynamoDB
        Local accepts any, but boto3 insists on some."""
        config = botocore.config.Config(
            # total_max_attempts counts the first attempt; max_attempts would not.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=max_pool_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self.config = config
        """The client's settings (retries, timeouts): other clients of the
        same store (the Streams API's) are made with them too."""
        self.endpoint_url = endpoint_url
        self.region_name = region
        self.client: DynamoDBClient = session.client(
            "dynamodb", **self._client_settings()
        )
        self.metering = Metering()
        self.metering.install(self.client)
        self._call_state = threading.local()
        """Per thread: whether an attempt of the current call lost its answer."""
        # First, so it sees every attempt before botocore's retry handler
        # decides. One handler does all ledger's work after an attempt: each
        # handler costs every attempt a call and a debug record in botocore.
        self.client.meta.events.register_first(
            "needs-retry.dynamodb", self._after_attempt
        )
        self.known_tables: set[str] = set()
        """Tables seen to exist and be active, so they are checked only once."""

    def _client_settings(self) -> dict[str, Any]:
        placeholder = "local" if self._placeholder_credentials else None
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region_name,
            "config": self.config,
            "aws_access_key_id": placeholder,
            "aws_secret_access_key": placeholder,
        }

    def streams_client(
        self, *, timestamp_parser: Callable[[Any], Any] | None = None
    ) -> DynamoDBStreamsClient:
        """Return a client of the DynamoDB Streams API of the same store.

        Made like :attr:`client` (endpoint, region, retries, timeouts), and
        refusing incomplete answers and reading them like it
        (:mod:`ledger.dynamodb.parsing`); not metered. ``timestamp_parser``:
        what turns the answers' timestamps into values (botocore's parser
        default, through its session's ``response_parser_factory``; None:
        botocore's own, aware datetimes in the local time zone).
        """
        # A session of its own: boto3 sessions are not safe across threads.
        core = botocore.session.get_session()
        factory = install_answer_parsing(core)
        if timestamp_parser is not None:
            factory.set_parser_defaults(timestamp_parser=timestamp_parser)
        streams: DynamoDBStreamsClient = boto3.session.Session(
            botocore_session=core
        ).client("dynamodbstreams", **self._client_settings())
        refuse_incomplete_answers(streams)
        return streams

    def measure(self) -> AbstractContextManager[Meter]:
        """Return a context manager yielding a :class:`Meter` for a block of work."""
        return self.metering.measure()

    @property
    def total(self) -> Meter:
        """Everything this connection has done so far."""
        return self.metering.total

    def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Call a DynamoDB operation (``"put_item"``) and translate its errors."""
        method: Callable[..., dict[str, Any]] = getattr(self.client, operation)
        write = operation in WRITE_OPERATIONS
        self._call_state.lost_answer = False
        try:
            # translate_errors' work without its context manager, whose
            # generator costs every call of every load and save.
            try:
                return method(**params)
            except Exception as error:
                translated = translated_error(error, write=write, operation=operation)
                if translated is None:
                    raise
                raise translated from error
        except ProgrammingError as error:
            table = params.get("TableName")
            if table and table not in str(error):
                # Of the same class: "no such table" stays told apart.
                named = (
                    TableNotFoundError
                    if isinstance(error, TableNotFoundError)
                    else ProgrammingError
                )
                raise named(f"Table {table}: {error}") from error
            raise
        except OperationalError as error:
            if write and self._call_state.lost_answer:
                if isinstance(error, AmbiguousWriteError):
                    raise
                raise AmbiguousWriteError(
                    f"An attempt of a write lost DynamoDB's answer, and the last "
                    f"attempt failed ({error}): the write may have been applied. "
                    "Retry the command with the same idempotency key to apply it "
                    "exactly once; without one, reload the aggregate to see "
                    "whether it was."
                ) from error
            raise

    def _after_attempt(
        self,
        caught_exception: BaseException | None = None,
        response: tuple[AWSResponse, dict[str, Any]] | None = None,
        operation: OperationModel | None = None,
        attempts: int = 0,
        request_dict: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        """Count an attempt, refuse its answer if incomplete, note a lost answer.

        botocore emits ``needs-retry`` once per request sent, so the meters
        count round trips (and the total, calls) here. An answer refused as
        incomplete counts as lost: for a write, that attempt was applied but
        its answer is unknown, as when it was lost.
        """
        if operation is not None:
            context = request_dict.get("context", {}) if request_dict else {}
            self.metering.count_attempt(operation.name, context, first=attempts == 1)
        refused = _refused(response, operation, attempts)
        if refused or isinstance(caught_exception, _LOST_ANSWER):
            self._call_state.lost_answer = True

    def items(
        self, operation: str, **params: Any
    ) -> Iterator[dict[str, AttributeValueTypeDef]]:
        """Yield every item of a ``"scan"`` or ``"query"``, one page after another."""
        while True:
            response = self.call(operation, **params)
            yield from response["Items"]
            last_key = response.get("LastEvaluatedKey")
            if last_key is None:
                return
            params["ExclusiveStartKey"] = last_key

    def close(self) -> None:
        """Close the client's connection pool."""
        self.client.close()


@contextmanager
def translate_errors(
    *, write: bool = False, operation: str | None = None
) -> Iterator[None]:
    """Translate botocore errors raised inside the block into eventsourcing's.

    ``write``: the block sends a write, so a lost answer is reported as
    :class:`AmbiguousWriteError`. ``operation`` (``"get_records"``): the
    call the block makes, named in a refusal of its parameters.
    """
    try:
        yield
    except Exception as error:
        translated = translated_error(error, write=write, operation=operation)
        if translated is None:
            raise
        raise translated from error


def translated_error(
    error: Exception, *, write: bool, operation: str | None = None
) -> PersistenceError | None:
    """Return the eventsourcing error for a botocore error, or None: leave it be.

    ``write``: the call sent a write, so a lost answer is an
    :class:`AmbiguousWriteError`. ``operation`` (``"query"``): the call
    made, named in a refusal of its parameters. ledger's own errors, and any
    that are not botocore's, are left as they are.
    """
    if isinstance(error, PersistenceError):
        return None
    if isinstance(error, botocore.exceptions.ClientError):
        return translate_client_error(error)
    if isinstance(error, botocore.exceptions.ParamValidationError):
        return refused_parameters(error, operation)
    if isinstance(
        error,
        (
            botocore.exceptions.NoCredentialsError,
            botocore.exceptions.PartialCredentialsError,
            botocore.exceptions.NoRegionError,
        ),
    ):
        return InterfaceError(
            f"DynamoDB client is not configured: {error}. Configure AWS credentials "
            "and region the usual boto3 way (environment, ~/.aws, or a role)."
        )
    if isinstance(error, _LOST_ANSWER):
        if not write:
            return OperationalError(
                f"DynamoDB did not answer: {error}. Nothing was written; try again."
            )
        return AmbiguousWriteError(
            f"DynamoDB's answer to a write was lost ({error}), after botocore's "
            "retries: the write may have been applied. Retry the command with "
            "the same idempotency key to apply it exactly once; without one, "
            "reload the aggregate to see whether it was."
        )
    if isinstance(
        error,
        (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
        ),
    ):
        return OperationalError(
            f"Could not reach DynamoDB: {error}. Check DYNAMODB_ENDPOINT_URL, or "
            "start a local server with `ledger local`."
        )
    return None


def refused_parameters(
    error: botocore.exceptions.ParamValidationError, operation: str | None
) -> ProgrammingError:
    """Return the error for a request botocore refused to send (its parameters).

    A ``ProgrammingError``, as DB-API drivers raise for a parameter of a type
    they cannot bind: the request was built wrong (a value of the wrong type
    passed in, or a mistake in ledger), so nothing was sent, and no retry or
    wait would send it. Not a ``DataError``: that is DynamoDB judging values
    it was sent (``ValidationException``, an item too large).
    """
    # botocore's report names each parameter it refused, one per line
    # ("Invalid type for parameter Key.application_name.S, value: ...").
    report = str(error.kwargs.get("report") or error).strip().replace("\n", "; ")
    call = (
        "".join(word.capitalize() for word in operation.split("_"))
        if operation
        else "a DynamoDB request"
    )
    return ProgrammingError(
        f"{call} was not sent: botocore refused its parameters ({report}). Pass "
        "ledger's calls the types their signatures name (aggregate ids as UUID "
        "or str, names and keys as str, versions and limits as int of at least "
        "1); if every argument was of its type, the request is ledger's mistake: "
        "report it with this message."
    )


def translate_client_error(error: botocore.exceptions.ClientError) -> PersistenceError:
    """Return the eventsourcing error for a DynamoDB ``ClientError``."""
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", str(error))
    if code == "ConditionalCheckFailedException":
        return IntegrityError(message)
    if code == "TransactionCanceledException":
        # botocore-stubs type a reason's Item wrongly (not as attribute values).
        reasons = [
            cast("CancellationReason", dict(reason))
            for reason in error.response.get("CancellationReasons", [])
        ]
        codes = {reason.get("Code", "None") for reason in reasons}
        if CONDITION_FAILED in codes:
            return TransactionConflictError(message, reasons)
        if codes & {"ValidationError", "ItemCollectionSizeLimitExceeded"}:
            return DataError(f"DynamoDB rejected the transaction: {message}")
        return TransactionCancelledError(message, reasons)
    if code in _THROTTLING_CODES:
        return OperationalError(
            f"DynamoDB kept refusing the request ({code}) after retries: {message}. "
            "Raise the table's capacity or DYNAMODB_MAX_ATTEMPTS."
        )
    if code in _REFUSED_CREDENTIALS_CODES:
        return InterfaceError(
            f"DynamoDB refused this client's credentials or permissions ({code}): "
            f"{message}. Check the AWS credentials ledger runs with and the IAM "
            "policy that grants them access to the tables."
        )
    if code == INCOMPLETE_ANSWER:
        return OperationalError(
            f"DynamoDB's answer arrived incomplete, to the last of botocore's "
            f"attempts too ({message}): nothing was read from it; try again. If "
            "it goes on, something between here and DynamoDB (a proxy, a load "
            "balancer) cuts answers short."
        )
    if code == "ResourceInUseException":
        return OperationalError(f"ResourceInUse: {message}")
    if code == "TrimmedDataAccessException":
        return ProgrammingError(
            f"{message}. A stream checkpoint is older than the stream's 24-hour "
            "retention: records after it may be gone, so the feed cannot go on "
            "without risking missed events. Rebuild the projection from the "
            "events table (`ledger projections rebuild NAME`): that also "
            "restarts the feed from the oldest record the stream keeps."
        )
    if code == "ResourceNotFoundException":
        return TableNotFoundError(
            f"{message}. If it should exist, check the endpoint, DYNAMODB_REGION "
            "and DYNAMODB_TABLE_PREFIX; to create the tables, set CREATE_TABLE=y "
            "(the default) or run `ledger tables create`."
        )
    if code in ("ValidationException", "ItemCollectionSizeLimitExceededException"):
        return DataError(f"DynamoDB rejected the request ({code}): {message}")
    return OperationalError(f"DynamoDB error {code}: {message}")
