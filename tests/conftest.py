"""Shared fixtures: real local servers and real files, never AWS.

`moto_server` starts moto's SQS server on 127.0.0.1 (boto3 talks HTTP to it), once per
session; `sqs_queue` makes a fresh queue per test, since moto's PurgeQueue is rate-limited.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chalicelib.queues.local import LocalQueue  # noqa: E402
from chalicelib.queues.sqs import SqsQueue  # noqa: E402
from chalicelib.settings import Settings, load_settings  # noqa: E402
from tests.kit import dlq_url, make_sqs_queue  # noqa: E402

# No test may reach AWS or need real credentials.
for _name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_ENDPOINT_URL_SQS", None)
os.environ.pop("QUEUE_URL", None)

_names = itertools.count()

# A worker that meets a bug on every batch, or a store that refuses a message, logs it and carries
# on: the messages come back after their visibility timeout, so `run(until_empty=True)` never
# returns and the test would hang instead of failing. In-process, such a record fails the test at
# once, naming it. A test that provokes one on purpose says so with @pytest.mark.worker_errors_expected.
WORKER_STUCK = ("unexpected error", "message %s cannot be written")


class WorkerStuck(BaseException):
    """A BaseException, so the worker's own `except Exception` around a batch cannot swallow it."""


class _FailOnStuckWorker(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(WORKER_STUCK):
            raise WorkerStuck(f"the worker cannot drain: {record.getMessage()}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "worker_errors_expected: the test provokes a worker error on purpose (no fail-fast on it)"
    )


@pytest.fixture(autouse=True)
def _worker_errors_fail_fast(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("worker_errors_expected"):
        yield
        return
    worker_log, handler = logging.getLogger("tune_firehose.worker"), _FailOnStuckWorker()
    worker_log.addHandler(handler)
    try:
        yield
    finally:
        worker_log.removeHandler(handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def sqs_client(moto_server: str):  # type: ignore[no-untyped-def]
    return boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")


@pytest.fixture()
def sqs_settings(moto_server: str, sqs_client, request: pytest.FixtureRequest) -> Settings:  # type: ignore[no-untyped-def]
    """Settings for a fresh SQS queue (with a dead-letter queue, maxReceiveCount 5) on moto."""
    name = f"t{next(_names)}-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:70]
    url, _dlq = make_sqs_queue(sqs_client, name)
    return load_settings(
        {
            "QUEUE_URL": url,
            "AWS_ENDPOINT_URL_SQS": moto_server,
            "AWS_REGION": "us-east-1",
            "AWS_KEY": "testing",
            "AWS_SECRET": "testing",
        },
        dotenv_path=None,
    )


@pytest.fixture
def cli_sqs_queue(
    sqs_settings: Settings,
    sqs_client: Any,
    moto_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, str]:
    """(URL, dead-letter URL) of the `sqs_settings` queue, for `read_queue.py` commands run in this
    process: they find moto through AWS_ENDPOINT_URL_SQS in the environment."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_server)
    url = sqs_settings.queue_url
    assert url is not None
    return url, dlq_url(sqs_client, url)


@pytest.fixture()
def sqs_queue(sqs_settings: Settings) -> Iterator[SqsQueue]:
    queue = SqsQueue.from_settings(sqs_settings)
    yield queue
    queue.close()


@pytest.fixture()
def local_queue(tmp_path: Path) -> Iterator[LocalQueue]:
    queue = LocalQueue(tmp_path / "queue.db")
    yield queue
    queue.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL server for the session (tests/pg.py). Without one: fail, never skip."""
    from tests.pg import PgCluster, PostgresMissing

    try:
        cluster = PgCluster.create()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    cluster.destroy()


@pytest.fixture()
def pg_url(pg_cluster: Any) -> str:
    """A fresh, empty schema on that server, as a postgresql:// URL (its search_path: that schema)."""
    return str(pg_cluster.create_schema())


@pytest.fixture(params=["local", "sqs"])
def any_queue(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The same contract, run against both backends."""
    return request.getfixturevalue("local_queue" if request.param == "local" else "sqs_queue")
