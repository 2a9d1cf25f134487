"""DATABASE_URL: postgresql:// selects PostgreSQL, libpq's parameters pass through, and a password
is never printed: not by redact(), not in a driver's error, not in a repr of the settings or the store.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.settings import SettingsError, load_settings
from db.postgres.store import PostgresStore
from db.postgres.url import is_postgres_url, redact, scrub


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/fh", "postgresql://app:***@db:5432/fh"),
        ("postgres://app@db/fh?sslmode=require", "postgres://app@db/fh?sslmode=require"),
        (
            "postgresql://app:a%40b@db/fh?sslmode=verify-full&password=two&sslpassword=three",
            "postgresql://app:***@db/fh?sslmode=verify-full&password=***&sslpassword=***",
        ),
        ("postgresql://app:p@ss@db/fh", "postgresql://app:***@db/fh"),  # a raw @ in the password
        (
            "postgresql://app:pw@h1:5432,h2:5433/fh?target_session_attrs=read-write",
            "postgresql://app:***@h1:5432,h2:5433/fh?target_session_attrs=read-write",
        ),
        ("host=db user=app password='se cret' dbname=fh", "host=db user=app password=*** dbname=fh"),
        ("postgresql://[::1", "postgresql://***"),  # unparseable: nothing of it shown
    ],
)
def test_redact_hides_every_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact(url) == shown


# Any password but one made of the mask's own asterisks (which "***" could not tell apart).
@given(password=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="*"), min_size=4))
def test_no_password_survives_redact_or_scrub(password: str) -> None:
    from urllib.parse import quote

    url = f"postgresql://app:{quote(password, safe='')}@db.example.com:5432/fh?sslmode=require"
    message = f'connection to "db.example.com" failed for password {password!s}'
    assert password not in redact(url).split("@", 1)[0].removeprefix("postgresql://app:")
    assert password not in scrub(message, url)


def test_scrub_removes_the_secret_from_a_driver_message() -> None:
    url = "postgresql://app:hunter2@db/fh"
    assert scrub("FATAL: bad password hunter2 for app", url) == "FATAL: bad password *** for app"


def test_only_postgresql_urls_select_postgresql() -> None:
    assert is_postgres_url("postgresql://db/fh") and is_postgres_url("POSTGRES://db/fh")
    assert not is_postgres_url("data/firehose.db") and not is_postgres_url(None) and not is_postgres_url("mysql://x")


def test_database_url_setting_is_read_and_never_shown() -> None:
    settings = load_settings({"DATABASE_URL": "postgresql://app:hunter2@db/fh?sslmode=require"}, dotenv_path=None)
    assert settings.database_url == "postgresql://app:hunter2@db/fh?sslmode=require"  # passed through whole
    assert "hunter2" not in repr(settings)
    assert load_settings({}, dotenv_path=None).database_url is None
    assert load_settings({"DATABASE_URL": "  "}, dotenv_path=None).database_url is None


def test_a_database_url_that_is_not_postgresql_names_the_setting_without_echoing_it() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL") as raised:
        load_settings({"DATABASE_URL": "mysql://app:hunter2@db/fh"}, dotenv_path=None)
    assert "hunter2" not in str(raised.value)


def test_the_store_shows_its_url_redacted() -> None:
    store = PostgresStore("postgresql://app:hunter2@db/fh")
    assert "hunter2" not in repr(store) and store.location == "postgresql://app:***@db/fh"
