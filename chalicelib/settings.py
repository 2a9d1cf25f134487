"""Settings from the environment (and `.env`), validated once at start.

A bad value fails fast with a message that names the setting, so an operator never has to
guess which line of `.env` is wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .codec import DEFAULT_MAX_DECODED_BYTES
from .errors import SettingsError

__all__ = ["DEFAULT_MAX_DECODED_BYTES", "Settings", "SettingsError", "load_settings"]

DEFAULT_QUEUE_PATH = "data/queue.db"
DEFAULT_DB_PATH = "data/firehose.db"
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    queue_url: str | None = None
    aws_region: str | None = None
    aws_key: str | None = None
    aws_secret: str | None = None
    aws_endpoint_url: str | None = None
    db_path: str = DEFAULT_DB_PATH
    # postgresql://... selects the PostgreSQL store instead of DB_PATH; hidden in repr (db/postgres/url.py redacts).
    database_url: str | None = None
    firehose_token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    # On Lambda the endpoint refuses to start without FIREHOSE_TOKEN unless this is set (runtime.py).
    allow_anonymous: bool = False

    @property
    def queue_backend(self) -> str:
        return "sqs" if self.queue_url and self.queue_url.startswith(("http://", "https://")) else "local"

    @property
    def local_queue_path(self) -> str:
        if self.queue_url and self.queue_url.startswith("local:"):
            return self.queue_url[len("local:") :]
        return DEFAULT_QUEUE_PATH

    def __repr__(self) -> str:  # never print secrets, even by accident in a traceback
        hidden = {"aws_secret", "firehose_token", "aws_key", "database_url"}
        parts = [
            f"{name}={'***' if name in hidden and getattr(self, name) else getattr(self, name)!r}"
            for name in self.__dataclass_fields__
        ]
        return f"Settings({', '.join(parts)})"


def _blank_to_none(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    raw = _blank_to_none(env.get(name))
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number of bytes, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {value}")
    return value


def _flag(env: dict[str, str], name: str) -> bool:
    raw = _blank_to_none(env.get(name))
    if raw is None or raw.lower() in _FALSE:
        return False
    if raw.lower() in _TRUE:
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _check_queue_url(url: str | None) -> None:
    if url is None:
        return
    if url.startswith("local:"):
        if not url[len("local:") :]:
            raise SettingsError("QUEUE_URL 'local:' needs a file path, e.g. local:data/queue.db")
        return
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path in ("", "/"):
        raise SettingsError(
            f"QUEUE_URL must be an http(s) SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME) "
            f"or local:PATH, got {url!r}"
        )


def _check_endpoint(name: str, url: str | None) -> None:
    if url is None:
        return
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SettingsError(f"{name} must be an http(s) URL, got {url!r}")


def load_settings(
    env: dict[str, str] | None = None,
    dotenv_path: str | Path | None = ".env",
    overrides: dict[str, str] | None = None,
) -> Settings:
    """Read settings from `env` (default: os.environ, after loading `.env` without overriding),
    with `overrides` (command-line flags) winning over both."""
    if env is None:
        if dotenv_path is not None and Path(dotenv_path).is_file():
            from dotenv import load_dotenv

            load_dotenv(dotenv_path, override=False)
        env = dict(os.environ)
    if overrides:
        env = {**env, **overrides}

    queue_url = _blank_to_none(env.get("QUEUE_URL"))
    _check_queue_url(queue_url)
    endpoint = _blank_to_none(env.get("AWS_ENDPOINT_URL_SQS")) or _blank_to_none(env.get("AWS_ENDPOINT_URL"))
    _check_endpoint("AWS_ENDPOINT_URL_SQS" if env.get("AWS_ENDPOINT_URL_SQS") else "AWS_ENDPOINT_URL", endpoint)
    key = _blank_to_none(env.get("AWS_KEY"))
    secret = _blank_to_none(env.get("AWS_SECRET"))
    if (key is None) != (secret is None):
        raise SettingsError("AWS_KEY and AWS_SECRET go together: set both, or neither to use boto3's credential chain")
    # A path is taken as given (a file name may begin or end with a space); only an empty one means the default.
    db_path = env.get("DB_PATH") or DEFAULT_DB_PATH
    database_url = _blank_to_none(env.get("DATABASE_URL"))
    if database_url is not None and not database_url.lower().startswith(("postgresql://", "postgres://")):
        # The value is not echoed: it may hold a password.
        raise SettingsError(
            "DATABASE_URL must be a postgresql:// URL (postgresql://user@host:5432/db); unset it to use DB_PATH"
        )
    return Settings(
        queue_url=queue_url,
        aws_region=_blank_to_none(env.get("AWS_REGION")) or _blank_to_none(env.get("AWS_DEFAULT_REGION")),
        aws_key=key,
        aws_secret=secret,
        aws_endpoint_url=endpoint,
        db_path=db_path,
        database_url=database_url,
        firehose_token=_blank_to_none(env.get("FIREHOSE_TOKEN")),
        max_body_bytes=_positive_int(env, "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        max_decoded_bytes=_positive_int(env, "MAX_DECODED_BYTES", DEFAULT_MAX_DECODED_BYTES),
        allow_anonymous=_flag(env, "ALLOW_ANONYMOUS"),
    )
