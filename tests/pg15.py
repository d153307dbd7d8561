"""A real PostgreSQL 15 as a *source*: Debian's server (`/usr/lib/postgresql/15/bin`).

Debian has no pgvector for 15 here, so this server only ever holds the content tables; the
vectors go to the embedded PostgreSQL 18 (`tests/pg.py`), configured with `sink.dsn`.

One throwaway cluster per test session, started on demand: `initdb -A trust` and `pg_ctl`, run
as the system user `postgres` when we are root (PostgreSQL refuses to run as root), else as
ourselves. It listens on 127.0.0.1 on a free port and on a unix socket in a directory of its
own; tests connect over TCP, as a sidecar reaches a database server. Each test gets a database
of its own (`Server`, as on the embedded server).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.harness import free_port, wait_until
from tests.pg import SERVER_SETTINGS, Server

BIN = Path("/usr/lib/postgresql/15/bin")
LIB = Path("/usr/lib/postgresql/15/lib")
# Set in CI: a missing PostgreSQL 15 (or wal2json) fails the tests instead of skipping them.
REQUIRE = "WAL2VEC_REQUIRE_PG15"
SYSTEM_USER = "postgres"  # the Debian package's; used only when we run as root
OUTPUT_PLUGINS = "pgoutput, test_decoding, wal2json"
_TIMEOUT = 120


def unavailable(reason: str) -> None:
    """Skip the test for `reason`, or fail it when CI requires PostgreSQL 15."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} (and {REQUIRE}=1)", pytrace=False)
    pytest.skip(reason)


def missing() -> str | None:
    """Why PostgreSQL 15 cannot run here, or None."""
    for program in ("initdb", "pg_ctl", "postgres"):
        if not (BIN / program).is_file():
            return (
                f"PostgreSQL 15 is not installed ({BIN / program} is missing; "
                "apt-get install postgresql-15)"
            )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return f"running as root, with no system user {SYSTEM_USER} to run PostgreSQL 15 as"
    return None


def wal2json_missing() -> str | None:
    """Why the wal2json output plugin cannot be loaded by PostgreSQL 15 here, or None."""
    if not (LIB / "wal2json.so").is_file():
        return (
            f"wal2json is not installed for PostgreSQL 15 ({LIB}/wal2json.so is missing; "
            "apt-get install postgresql-15-wal2json)"
        )
    return None


@dataclass
class Pg15Server(Server):
    """A running PostgreSQL 15 cluster in `base` (data, socket and log under it)."""

    base: Path
    port: int
    user: str | None  # the system user the server runs as; None: ourselves

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    @property
    def commands(self) -> Path:
        """What initdb and pg_ctl printed."""
        return self.base / "commands.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def restart_with(self, mode: str) -> None:
        """`pg_ctl restart -m mode` (`fast`: clean; `immediate`: a crash, recovered from WAL)."""
        self._pg_ctl("-w", "-t", str(_TIMEOUT), "restart", "-m", mode, "-l", str(self.log))

    def close(self) -> None:
        """Stop the server (fast, then immediate if that fails) and delete its files, unless
        WAL2VEC_KEEP_PG=1."""
        try:
            self._pg_ctl("-w", "-t", str(_TIMEOUT), "stop", "-m", "fast")
        except (RuntimeError, subprocess.SubprocessError):
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                self._pg_ctl("-w", "-t", str(_TIMEOUT), "stop", "-m", "immediate")
        if os.environ.get("WAL2VEC_KEEP_PG") != "1":
            shutil.rmtree(self.base, ignore_errors=True)

    def _pg_ctl(self, *args: str) -> None:
        run_as(self.user, [str(BIN / "pg_ctl"), "-D", str(self.data_dir), *args], self.commands)


def run_as(user: str | None, command: list[str], output: Path) -> None:
    """Run a server program, as `user` when given (we are root). Its output goes to a file,
    never a pipe: a postmaster it starts would hold a pipe open after it exits."""
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    with output.open("a") as handle:
        code = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, timeout=_TIMEOUT, check=False
        ).returncode
    if code != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {code}:\n{output.read_text(errors='replace')}"
        )


def _traversable(path: Path) -> None:
    """Let the server's system user reach `path`: o+x on every directory above it (pytest's
    temporary root is 0700)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def start_server(base: Path, extra: dict[str, str] | None = None) -> Pg15Server:
    """initdb and start a cluster in `base` (created), configured for logical decoding."""
    user = SYSTEM_USER if os.geteuid() == 0 else None
    base.mkdir(parents=True, exist_ok=True)
    server = Pg15Server(base, free_port(), user)
    server.socket_dir.mkdir()
    if user is not None:
        _traversable(base)
        entry = pwd.getpwnam(user)
        for path in (base, server.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    run_as(
        user,
        [
            str(BIN / "initdb"),
            "-D",
            str(server.data_dir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",  # as the embedded server: UTF-8 text, C collation
            "--no-sync",
        ],
        server.commands,
    )
    settings = {
        **SERVER_SETTINGS,
        "listen_addresses": "127.0.0.1",
        "port": str(server.port),
        "unix_socket_directories": str(server.socket_dir),
        **(extra or {}),
    }
    conf = "".join(f"{name} = '{value}'\n" for name, value in settings.items())
    with (server.data_dir / "postgresql.conf").open("a") as handle:
        handle.write(conf)
    try:
        server._pg_ctl("-w", "-t", str(_TIMEOUT), "-l", str(server.log), "start")
        _allow_wal2json(server)
    except BaseException:
        server.close()
        raise
    return server


def _allow_wal2json(server: Pg15Server) -> None:
    """Newer minor releases gate output plugins with `output_plugin_libraries` (default
    `pgoutput, test_decoding`; 15.18 has no such setting): let wal2json through where the
    setting exists. The reload reaches sessions asynchronously: wait until a new one sees it."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        level = conn.execute("SHOW wal_level").fetchone()
        assert level == ("logical",), level
        gated = conn.execute(
            "SELECT 1 FROM pg_settings WHERE name = 'output_plugin_libraries'"
        ).fetchone()
        if not gated:
            return
        # An unquoted list: quoted, it would be one name with commas in it.
        conn.execute(f"ALTER SYSTEM SET output_plugin_libraries = {OUTPUT_PLUGINS}")
        conn.execute("SELECT pg_reload_conf()")
    wait_until(lambda: "wal2json" in _setting(server, "output_plugin_libraries"), what="reload")


def _setting(server: Pg15Server, name: str) -> str:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
        return str(row[0]) if row else ""


@contextlib.contextmanager
def serving(base: Path) -> Iterator[Pg15Server]:
    """A cluster in `base` for as long as the block runs; skips (or fails, with
    WAL2VEC_REQUIRE_PG15=1) when PostgreSQL 15 is not installed."""
    reason = missing()
    if reason is not None:
        unavailable(reason)
    server = start_server(base)
    try:
        yield server
    finally:
        server.close()
