"""Settings: names from DESIGN.md, `.env` support, and a bad value fails naming the setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chalicelib.settings import SettingsError, load_settings


def test_defaults_select_the_embedded_local_queue() -> None:
    s = load_settings({}, dotenv_path=None)
    assert s.queue_backend == "local" and s.local_queue_path == "data/queue.db"
    assert s.db_path == "data/firehose.db" and s.firehose_token is None


def test_local_path_and_sqs_url() -> None:
    assert load_settings({"QUEUE_URL": "local:/tmp/q.db"}, dotenv_path=None).local_queue_path == "/tmp/q.db"
    s = load_settings(
        {"QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/firehose", "AWS_REGION": "eu-west-1"},
        dotenv_path=None,
    )
    assert s.queue_backend == "sqs" and s.aws_region == "eu-west-1"


def test_endpoint_override_prefers_the_sqs_specific_one() -> None:
    s = load_settings({"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_SQS": "http://b:2"}, dotenv_path=None)
    assert s.aws_endpoint_url == "http://b:2"


@pytest.mark.parametrize(
    "env, name",
    [
        ({"QUEUE_URL": "ftp://x/y"}, "QUEUE_URL"),
        ({"QUEUE_URL": "local:"}, "QUEUE_URL"),
        ({"QUEUE_URL": "https://sqs.us-east-1.amazonaws.com"}, "QUEUE_URL"),
        ({"AWS_KEY": "AKIA"}, "AWS_SECRET"),
        ({"AWS_ENDPOINT_URL_SQS": "localhost:4566"}, "AWS_ENDPOINT_URL_SQS"),
        ({"MAX_BODY_BYTES": "lots"}, "MAX_BODY_BYTES"),
        ({"MAX_BODY_BYTES": "-5"}, "MAX_BODY_BYTES"),
    ],
)
def test_bad_setting_names_itself(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings(env, dotenv_path=None)


def test_dotenv_is_read_without_overriding_the_environment(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env_file = tmp_path / ".env"
    env_file.write_text("DB_PATH=from-dotenv.db\nFIREHOSE_TOKEN=tok\n")
    monkeypatch.delenv("DB_PATH", raising=False)
    monkeypatch.setenv("FIREHOSE_TOKEN", "from-env")
    try:
        s = load_settings(dotenv_path=env_file)
    finally:
        os.environ.pop("DB_PATH", None)  # load_dotenv wrote it; keep other tests clean
    assert s.db_path == "from-dotenv.db" and s.firehose_token == "from-env"


def test_repr_hides_secrets() -> None:
    s = load_settings({"AWS_KEY": "AKIAEXAMPLE", "AWS_SECRET": "sekrit", "FIREHOSE_TOKEN": "tok"}, dotenv_path=None)
    assert "sekrit" not in repr(s) and "tok'" not in repr(s) and "AKIAEXAMPLE" not in repr(s)


def test_command_line_overrides_win_and_are_validated() -> None:
    env = {"QUEUE_URL": "ftp://stale", "DB_PATH": "env.db"}
    s = load_settings(env, dotenv_path=None, overrides={"QUEUE_URL": "local:/tmp/q.db"})
    assert s.local_queue_path == "/tmp/q.db" and s.db_path == "env.db"
    with pytest.raises(SettingsError, match="QUEUE_URL"):
        load_settings({}, dotenv_path=None, overrides={"QUEUE_URL": "ftp://nope"})


@pytest.mark.parametrize(
    "raw, expected", [(None, False), ("", False), ("false", False), ("0", False), ("true", True), ("YES", True)]
)
def test_allow_anonymous_is_a_flag(raw: str | None, expected: bool) -> None:
    env = {} if raw is None else {"ALLOW_ANONYMOUS": raw}
    assert load_settings(env, dotenv_path=None).allow_anonymous is expected


def test_allow_anonymous_refuses_anything_else_naming_itself() -> None:
    with pytest.raises(SettingsError, match="ALLOW_ANONYMOUS must be true or false, got 'maybe'"):
        load_settings({"ALLOW_ANONYMOUS": "maybe"}, dotenv_path=None)


def test_the_decoded_limit_is_defined_once() -> None:
    """The 32 MiB default: settings take the codec's, so endpoint, worker and packing agree."""
    from chalicelib import codec, settings

    assert settings.DEFAULT_MAX_DECODED_BYTES is codec.DEFAULT_MAX_DECODED_BYTES
    assert load_settings({}, dotenv_path=None).max_decoded_bytes == codec.DEFAULT_MAX_DECODED_BYTES
