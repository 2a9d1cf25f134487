"""A throwaway PostgreSQL server: `initdb` in a temporary folder, `pg_ctl` on a free port of
127.0.0.1 with its socket in the same folder, stopped and removed at the end.

The tests use it through the `pg_cluster` and `pg_url` fixtures (tests/conftest.py); the bench
and demos can use `PgCluster.started()` directly. Without PostgreSQL's server binaries it fails
with a message that says how to install them: CI must run the PostgreSQL tests, never skip them.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were not found on PATH or in /usr/lib/postgresql/*/bin. "
    "Install them with scripts/ensure_postgres.sh, or as root: apt-get install -y postgresql "
    "(Debian/Ubuntu; any PostgreSQL 15 or newer will do)."
)
# Settings for a server that lives as long as a test session. fsync is off: the tests kill
# the server process, never the machine, so the page cache survives every crash they make.
TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off", "max_connections": "100"}
SERVICE_USER = "postgres"  # initdb refuses to run as root


class PostgresMissing(RuntimeError):
    pass


class PostgresCommandFailed(RuntimeError):
    """initdb or pg_ctl failed; the message holds its output and the server log's tail."""


def find_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl: PATH first, then Debian's versioned folders, newest first."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in versions:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise PostgresMissing(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """One server with its own data folder. `url()` names a database on it."""

    def __init__(self, bin_dir: Path, base: Path, port: int) -> None:
        self.bin_dir, self.base, self.port = bin_dir, base, port
        self.data = base / "data"
        self.log = base / "server.log"
        self._names = itertools.count(1)
        self._running = False
        self._shared_made = False

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    @contextmanager
    def started(cls, settings: dict[str, str] | None = None) -> Iterator[PgCluster]:
        cluster = cls.create(settings)
        try:
            yield cluster
        finally:
            cluster.destroy()

    @classmethod
    def create(cls, settings: dict[str, str] | None = None) -> PgCluster:
        """initdb and start; the caller must `destroy()` (an exit hook does it if they cannot)."""
        bin_dir = find_bin_dir()
        base = Path(tempfile.mkdtemp(prefix="firehose-pg-"))
        cluster = cls(bin_dir, base, 0)
        atexit.register(cluster.destroy)
        try:
            if _as_root():
                shutil.chown(base, user=SERVICE_USER)
            cluster._run(
                "initdb", "-D", str(cluster.data), "--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-N"
            )
            cluster._start_on_free_port(TEST_SETTINGS if settings is None else settings)
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _start_on_free_port(self, settings: dict[str, str]) -> None:
        # A free port can be taken between choosing it and binding it: try a few.
        for attempt in range(3):
            self.port = _free_port()
            self._configure({**settings, "port": str(self.port)})
            try:
                self._pg_ctl("start", "-l", str(self.log))
                self._running = True
                return
            except PostgresCommandFailed:
                if attempt == 2:
                    raise

    def _configure(self, settings: dict[str, str]) -> None:
        # Appended lines win over earlier ones, so a retry with another port needs no cleanup.
        lines = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.base),
            **settings,
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/pg.py\n")
            for name, value in lines.items():
                conf.write(f"{name} = '{value}'\n")

    def restart(self, mode: str = "immediate") -> None:
        """Restart the server; `immediate` is a crash for the clients (their connections drop)."""
        self._pg_ctl("restart", "-m", mode, "-l", str(self.log))

    def stop(self, mode: str = "fast") -> None:
        if self._running:
            self._pg_ctl("stop", "-m", mode)
            self._running = False

    def start(self) -> None:
        if not self._running:
            self._pg_ctl("start", "-l", str(self.log))
            self._running = True

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except PostgresCommandFailed:
            pass
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # -- databases ---------------------------------------------------------------------------

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        import psycopg
        from psycopg import sql

        name = name or f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def create_schema(self, name: str | None = None) -> str:
        """A new empty schema in the shared database `tests`; returns a URL whose search_path is
        only that schema. As isolated as a database for the store, and ~100x cheaper to make
        (CREATE DATABASE copies a template: ~0.35 s here)."""
        import psycopg
        from psycopg import sql

        if not self._shared_made:
            with psycopg.connect(self.url(), autocommit=True) as admin:
                admin.execute("CREATE DATABASE tests")
            self._shared_made = True
        name = name or f"s{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("tests"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return f"{self.url('tests')}?options=-csearch_path%3D{name}"

    def require_password(self, user: str, password: str) -> None:
        """Make `user` a role that must log in over TCP with `password` (the others stay trusted)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(password))
            )
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"host all {user} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        self.restart("fast")  # unlike a reload, done when it returns

    # -- running the binaries ----------------------------------------------------------------

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", *args)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if _as_root():
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=self.base)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresCommandFailed(
                f"{program} {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
                f"--- server log (tail) ---\n{log}"
            )


def _as_root() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise PostgresMissing(
            f"running as root, and initdb refuses root, but there is no {SERVICE_USER!r} user to run it as. "
            + INSTALL_HINT
        ) from None
    return True
