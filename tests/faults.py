"""A fault-injecting TCP proxy between a DynamoDB client and DynamoDB Local.

Reliability is shown by breaking the wire, not by reading code. A
``FaultProxy`` listens on the loopback interface, forwards each HTTP/1.1
request to an upstream endpoint and, when a rule the test set matches,
does something else to it instead::

    with FaultProxy(dynamodb_endpoint) as proxy:
        proxy.on("TransactWriteItems", fault=LOSE_RESPONSE)
        client = boto3.client("dynamodb", endpoint_url=proxy.endpoint_url, ...)
        ...
        assert proxy.requests == [("TransactWriteItems", LOSE_RESPONSE), ...]

It understands just enough HTTP/1.1 to find where each request and response
on a keep-alive connection ends (``Content-Length`` or chunked bodies) and to
name each request's DynamoDB operation from its ``X-Amz-Target`` header.
``Expect: 100-continue`` is not supported: botocore sends it only for S3.

Test support only: standard library, one thread per client connection.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self
from urllib.parse import urlsplit

FaultKind = Literal[
    "LOSE_RESPONSE",
    "TRUNCATE",
    "TRUNCATE_UNCHECKED",
    "CUT",
    "DELAY",
    "OUTAGE",
    "SERVER_ERROR",
    "REFUSE",
]


@dataclass(frozen=True)
class Fault:
    """What the proxy does to one request instead of passing it through."""

    kind: FaultKind
    seconds: float = 0.0
    """How long a ``DELAY`` holds the request; unused by the other kinds."""
    code: str = ""
    """The error a ``REFUSE`` answers with; unused by the other kinds."""

    def __repr__(self) -> str:
        if self.kind == "DELAY":
            return f"DELAY({self.seconds:g})"
        return f"REFUSE({self.code})" if self.kind == "REFUSE" else self.kind


LOSE_RESPONSE = Fault("LOSE_RESPONSE")
"""Forward the request, read DynamoDB's response, then close the client
connection without sending it: the write happened, the caller sees an error."""

TRUNCATE = Fault("TRUNCATE")
"""Forward the request, read DynamoDB's response, then send its head and only
the first half of its body, and close the connection. The head still says the
whole length: botocore does not hold a body to its ``Content-Length``, so it
reads the half it got as the whole answer. DynamoDB's ``x-amz-crc32`` header
is kept."""

TRUNCATE_UNCHECKED = Fault("TRUNCATE_UNCHECKED")
"""``TRUNCATE``, and drop DynamoDB's ``x-amz-crc32`` header too, as a server
or a device on the way that does not pass DynamoDB's checksum on would."""

CUT = Fault("CUT")
"""Close the client connection instead of forwarding: nothing reaches DynamoDB."""

SERVER_ERROR = Fault("SERVER_ERROR")
"""Answer with DynamoDB's HTTP 500 ``InternalServerError`` instead of
forwarding: nothing reaches DynamoDB, and botocore retries it."""

_SERVER_ERROR_BODY = (
    b'{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError",'
    b'"message":"injected by the fault proxy"}'
)
_SERVER_ERROR_RESPONSE = (
    b"HTTP/1.1 500 Internal Server Error\r\n"
    b"Content-Type: application/x-amz-json-1.0\r\n"
    b"x-amzn-ErrorType: InternalServerError\r\n"
    b"Content-Length: " + str(len(_SERVER_ERROR_BODY)).encode() + b"\r\n"
    b"\r\n" + _SERVER_ERROR_BODY
)

OUTAGE = Fault("OUTAGE")
"""Logged for a request read while the proxy was down; it was not forwarded."""


# Upper case, so that it reads like the constant faults: ``fault=DELAY(0.5)``.
def DELAY(seconds: float) -> Fault:
    """Hold the request ``seconds`` before forwarding it.

    It is forwarded even if the caller gave up meanwhile, as over a slow network.
    """
    return Fault("DELAY", seconds)


def REFUSE(code: str) -> Fault:
    """Answer with DynamoDB's HTTP 400 error ``code`` instead of forwarding.

    For errors DynamoDB Local cannot be brought to return (a stream record
    trimmed after 24 hours, say); nothing reaches DynamoDB.
    """
    return Fault("REFUSE", code=code)


def _refusal(code: str) -> bytes:
    body = (
        b'{"__type":"com.amazonaws.dynamodb.v20120810#' + code.encode() + b'",'
        b'"message":"injected by the fault proxy"}'
    )
    return (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: application/x-amz-json-1.0\r\n"
        b"x-amzn-ErrorType: " + code.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )


Matcher = Callable[[str, int, bytes], bool]
"""Chooses requests from (operation, index, body); ``index`` is 1-based and
counts the requests of that operation the proxy has read, outages included."""


@dataclass
class Rule:
    """Apply ``fault`` to the requests ``matches`` chooses, ``times`` times."""

    matches: Matcher
    fault: Fault
    times: int | None = 1
    """How many requests the rule faults; ``None``: every one it matches."""
    fired: int = 0
    """How many requests it has faulted so far."""

    @property
    def spent(self) -> bool:
        """Whether the rule has faulted all the requests it was meant to."""
        return self.times is not None and self.fired >= self.times


_MAX_HEAD_BYTES = 64 * 1024
"""A request or response head longer than this is not HTTP we understand."""
_RECV_BYTES = 64 * 1024


class _UnreadableError(Exception):
    """The peer closed mid-message or sent something that is not HTTP/1.1."""


class _Reader:
    """Buffered reads of lines and exact byte counts from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def _fill(self) -> bool:
        chunk = self._sock.recv(_RECV_BYTES)
        self._buffer += chunk
        return bool(chunk)

    def at_eof(self) -> bool:
        """Wait for data; True if the peer closed cleanly before sending any."""
        return not self._buffer and not self._fill()

    def read_line(self) -> bytes:
        """Read one line, with its line ending."""
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > _MAX_HEAD_BYTES:
                raise _UnreadableError("line too long")
            if not self._fill():
                raise _UnreadableError("closed mid-line")
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return line

    def read_exact(self, size: int) -> bytes:
        """Read exactly ``size`` bytes."""
        while len(self._buffer) < size:
            if not self._fill():
                raise _UnreadableError("closed mid-body")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_to_end(self) -> bytes:
        """Read until the peer closes."""
        while self._fill():
            pass
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


@dataclass
class _Message:
    """One HTTP request or response, as received."""

    start_line: str
    headers: dict[str, str]
    """Header values by lower-cased name (a repeated header keeps its last)."""
    raw: bytes
    """The bytes exactly as received, head and body, to forward unchanged."""
    body: bytes
    """The body, with any chunked framing removed."""
    closes: bool
    """Whether the connection ends after this message."""


def _read_head(reader: _Reader) -> tuple[str, dict[str, str], bytes]:
    raw = bytearray(reader.read_line())
    start_line = raw.decode("latin-1").strip()
    headers: dict[str, str] = {}
    while (line := reader.read_line()) not in (b"\r\n", b"\n"):
        raw += line
        if len(raw) > _MAX_HEAD_BYTES:
            raise _UnreadableError("head too long")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise _UnreadableError(f"not a header line: {line!r}")
        headers[name.strip().lower()] = value.strip()
    raw += line
    return start_line, headers, bytes(raw)


def _read_chunked(reader: _Reader) -> tuple[bytes, bytes]:
    raw = bytearray()
    body = bytearray()
    while True:
        size_line = reader.read_line()
        raw += size_line
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError as error:
            raise _UnreadableError(f"bad chunk size: {size_line!r}") from error
        if size == 0:
            break
        chunk = reader.read_exact(size + 2)  # the data and its CRLF
        raw += chunk
        body += chunk[:size]
    while (trailer := reader.read_line()) not in (b"\r\n", b"\n"):
        raw += trailer
    raw += trailer
    return bytes(raw), bytes(body)


def _content_length(headers: dict[str, str]) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError as error:
        raise _UnreadableError("bad Content-Length") from error


def _closes(version: str, headers: dict[str, str]) -> bool:
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" not in tokens
    return "close" in tokens


def _is_chunked(headers: dict[str, str]) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


def _read_request(reader: _Reader) -> _Message | None:
    """Read the next request, or return None if the client closed between them."""
    if reader.at_eof():
        return None
    start_line, headers, head = _read_head(reader)
    if _is_chunked(headers):
        raw_body, body = _read_chunked(reader)
    else:
        raw_body = body = reader.read_exact(_content_length(headers))
    version = start_line.rpartition(" ")[2]
    return _Message(
        start_line, headers, head + raw_body, body, _closes(version, headers)
    )


def _read_response(reader: _Reader, method: str) -> _Message:
    """Read the response to a request (with any interim 1xx responses before it)."""
    interim = b""
    while True:
        start_line, headers, head = _read_head(reader)
        parts = start_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise _UnreadableError(f"not a status line: {start_line!r}")
        version, status = parts[0], int(parts[1])
        if status >= 200:
            break
        interim += head
    closes = _closes(version, headers)
    if method == "HEAD" or status in (204, 304):
        raw_body = body = b""
    elif _is_chunked(headers):
        raw_body, body = _read_chunked(reader)
    elif "content-length" in headers:
        raw_body = body = reader.read_exact(_content_length(headers))
    else:
        raw_body = body = reader.read_to_end()
        closes = True
    return _Message(start_line, headers, interim + head + raw_body, body, closes)


_CHECKSUM_HEADER = "x-amz-crc32"


def _truncated(response: _Message, *, keep_checksum: bool) -> bytes:
    """The response's head (framed by ``Content-Length``) and half its body."""
    dropped = {"transfer-encoding", "content-length", "connection"}
    if not keep_checksum:
        dropped.add(_CHECKSUM_HEADER)
    lines = [response.start_line]
    lines += [f"{k}: {v}" for k, v in response.headers.items() if k not in dropped]
    lines += [f"content-length: {len(response.body)}", "connection: close"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + response.body[: len(response.body) // 2]


def operation_of(request_headers: dict[str, str], start_line: str = "") -> str:
    """Name a request's operation: ``PutItem`` for ``DynamoDB_20120810.PutItem``.

    The Streams API's ``DynamoDBStreams_20120810.GetRecords`` is ``GetRecords``.
    A request without ``X-Amz-Target`` is named by its request line.
    """
    target = request_headers.get("x-amz-target")
    if target is None:
        return start_line.rpartition(" ")[0] or start_line
    return target.rpartition(".")[2]


class _Connection:
    """A client connection and the upstream connection serving it."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.upstream_reader: _Reader | None = None
        self._lock = threading.Lock()
        self._shut = False

    @property
    def is_shut(self) -> bool:
        """Whether ``shut`` was called: the connection must end."""
        return self._shut

    def attach_upstream(self, upstream: socket.socket) -> None:
        """Use ``upstream`` from now on, unless the connection was shut."""
        with self._lock:
            if self._shut:
                upstream.close()
                raise _UnreadableError("shut while connecting upstream")
            self.drop_upstream()
            self.upstream = upstream
            self.upstream_reader = _Reader(upstream)

    def drop_upstream(self) -> None:
        """Close the upstream connection, if any."""
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = self.upstream_reader = None

    def shut(self) -> None:
        """End the connection from another thread: wake its blocked reads.

        Only the serving thread closes the sockets, so none is closed under it.
        """
        with self._lock:
            self._shut = True
            for sock in (self.client, self.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close both sockets (by the serving thread, when it is done)."""
        with self._lock:
            self._shut = True
            self.drop_upstream()
            self.client.close()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``upstream`` and injects faults.

    Use it as a context manager (or ``start``/``stop``). Set faults with
    ``on``, take it down with ``down``/``up`` or ``outage``, and read what
    passed in ``requests``.
    """

    def __init__(self, upstream: str, *, stop_timeout: float = 10.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.stop_timeout = stop_timeout
        self.connections = 0
        """Client connections accepted and served."""
        self.refused = 0
        """Client connections closed on arrival because the proxy was down."""
        self._lock = threading.RLock()
        self._rules: list[Rule] = []
        self._log: list[tuple[str, Fault | None]] = []
        self._seen: dict[str, int] = {}
        self._live: set[_Connection] = set()
        self._threads: list[threading.Thread] = []
        self._down = False
        self._up = threading.Event()
        self._up.set()
        self._outage_timer: threading.Timer | None = None
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._port = 0
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on, on 127.0.0.1."""
        if self._listener is None:
            raise RuntimeError("FaultProxy is not started.")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """The URL clients use to reach upstream through the proxy."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[tuple[str, Fault | None]]:
        """Each request read, in order: (operation, the fault applied or None)."""
        with self._lock:
            return list(self._log)

    def on(
        self,
        operation: str | Matcher,
        *,
        fault: Fault,
        nth: int = 1,
        times: int | None = 1,
    ) -> Rule:
        """Fault requests of ``operation`` (a name, or a ``Matcher``).

        The rule applies from the ``nth`` request of that operation on (1-based)
        and faults ``times`` requests (``None``: all). Rules are tried in the
        order they were set; the first that is not spent and matches wins.
        Returns the rule, whose ``fired`` counts the requests it faulted.
        """
        if isinstance(operation, str):
            name = operation

            def matches(op: str, index: int, body: bytes) -> bool:
                return op == name and index >= nth
        else:
            chooses = operation

            def matches(op: str, index: int, body: bytes) -> bool:
                return index >= nth and chooses(op, index, body)

        rule = Rule(matches, fault, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        """Forget all rules: requests pass through again."""
        with self._lock:
            self._rules.clear()

    @property
    def is_down(self) -> bool:
        """Whether the proxy is in an outage."""
        return self._down

    def down(self) -> None:
        """Begin an outage: close every connection now and each new one at once.

        A request in flight may or may not have reached DynamoDB, as in a real
        outage; none read from now on is forwarded.
        """
        with self._lock:
            self._down = True
            self._up.clear()
            live = list(self._live)
        for connection in live:
            connection.shut()

    def up(self) -> None:
        """End the outage: new connections are served again."""
        with self._lock:
            if self._outage_timer is not None:
                self._outage_timer.cancel()
                self._outage_timer = None
            self._down = False
            self._up.set()

    def outage(self, seconds: float) -> None:
        """Go ``down`` now and come back ``up`` after ``seconds``."""
        self.down()
        timer = threading.Timer(seconds, self.up)
        timer.daemon = True
        with self._lock:
            if self._outage_timer is not None:
                self._outage_timer.cancel()
            self._outage_timer = timer
        timer.start()

    def wait_until_up(self, timeout: float) -> bool:
        """Block until the proxy is up; False if ``timeout`` passed first."""
        return self._up.wait(timeout)

    def start(self) -> Self:
        """Listen on a free loopback port and start accepting connections."""
        if self._listener is not None:
            raise RuntimeError("FaultProxy is already started.")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._port = self._listener.getsockname()[1]
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="FaultProxy-accept", daemon=True
        )
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close every connection and wait for every thread."""
        if self._stopping.is_set() or self._acceptor is None:
            return
        self._stopping.set()
        assert self._wake_writer is not None
        self._wake_writer.send(b"x")
        self._acceptor.join(self.stop_timeout)
        with self._lock:
            timer, self._outage_timer = self._outage_timer, None
            live = list(self._live)
            threads = [self._acceptor, *self._threads]
        if timer is not None:
            timer.cancel()
            threads.append(timer)
        for connection in live:
            connection.shut()
        for thread in threads:
            thread.join(self.stop_timeout)
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            if sock is not None:
                sock.close()
        leaked = [thread.name for thread in threads if thread.is_alive()]
        if leaked:
            raise RuntimeError(f"FaultProxy threads did not stop: {leaked}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        assert self._wake_reader is not None
        while True:
            ready, _, _ = select.select([self._listener, self._wake_reader], [], [])
            if self._wake_reader in ready:
                return
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue  # the client gave up before it was accepted
            with self._lock:
                refuse = self._down
                if refuse:
                    self.refused += 1
                else:
                    self.connections += 1
                    connection = _Connection(client)
                    self._live.add(connection)
                    thread = threading.Thread(
                        target=self._serve,
                        args=(connection,),
                        name=f"FaultProxy-connection-{self.connections}",
                        daemon=True,
                    )
                    self._threads = [t for t in self._threads if t.is_alive()]
                    self._threads.append(thread)
                    thread.start()
            if refuse:
                client.close()

    def _decide(self, operation: str, body: bytes) -> Fault | None:
        """Log the request and choose its fault."""
        with self._lock:
            index = self._seen[operation] = self._seen.get(operation, 0) + 1
            fault: Fault | None = None
            if self._down:
                fault = OUTAGE
            else:
                for rule in self._rules:
                    if not rule.spent and rule.matches(operation, index, body):
                        rule.fired += 1
                        fault = rule.fault
                        break
            self._log.append((operation, fault))
            return fault

    def _serve(self, connection: _Connection) -> None:
        try:
            self._relay(connection)
        except (OSError, _UnreadableError):
            pass  # either side closed or broke the connection: it simply ends
        finally:
            with self._lock:
                self._live.discard(connection)
            connection.close()

    def _relay(self, connection: _Connection) -> None:
        """Relay requests and responses until a fault or either side ends it."""
        client_reader = _Reader(connection.client)
        while (request := _read_request(client_reader)) is not None:
            operation = operation_of(request.headers, request.start_line)
            fault = self._decide(operation, request.body)
            if fault in (OUTAGE, CUT):
                return
            if fault == SERVER_ERROR:
                connection.client.sendall(_SERVER_ERROR_RESPONSE)
                continue
            if fault is not None and fault.kind == "REFUSE":
                connection.client.sendall(_refusal(fault.code))
                continue
            if fault is not None and fault.kind == "DELAY":
                self._stopping.wait(fault.seconds)
            if connection.is_shut or self._stopping.is_set():
                return
            upstream = self._upstream_for(connection)
            upstream.sendall(request.raw)
            assert connection.upstream_reader is not None
            method = request.start_line.partition(" ")[0]
            response = _read_response(connection.upstream_reader, method)
            if fault == LOSE_RESPONSE:
                return
            if fault in (TRUNCATE, TRUNCATE_UNCHECKED):
                keep = fault == TRUNCATE
                connection.client.sendall(_truncated(response, keep_checksum=keep))
                return
            connection.client.sendall(response.raw)
            if request.closes or response.closes:
                return

    def _upstream_for(self, connection: _Connection) -> socket.socket:
        """The connection's upstream socket, (re)connected if closed meanwhile."""
        upstream = connection.upstream
        if upstream is not None:
            # Readable while idle means upstream closed it (or broke HTTP).
            readable, _, _ = select.select([upstream], [], [], 0)
            if not readable:
                return upstream
        connection.attach_upstream(socket.create_connection(self.upstream))
        assert connection.upstream is not None
        return connection.upstream
