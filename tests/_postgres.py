"""A real PostgreSQL server for the tests: initdb + pg_ctl in a temp folder, loopback only.

The server binaries come from the machine (``initdb``/``pg_ctl`` on PATH or under
``/usr/lib/postgresql/*/bin``; Debian/Ubuntu: ``apt-get install postgresql``). PostgreSQL refuses
to run as root, so as root the cluster belongs to an unprivileged system user (``postgres`` or
``nobody``) and the commands run through ``runuser``. ``pg_ctl start -w`` returns once the server
accepts connections; ``stop -m fast`` shuts it down. Every failure to start says why, so a test
that needs the server can skip with that reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable"]


class PostgresUnavailable(RuntimeError):
    """The server cannot be started here (the message says why)."""


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for cand in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return cand
    raise PostgresUnavailable(f"PostgreSQL's {name!r} is not installed (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throw-away cluster. ``start()``, then :meth:`new_database` per test, ``stop()``."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        self.user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = name
                break
            if self.user is None or not shutil.which("runuser"):
                raise PostgresUnavailable("running as root without a 'postgres'/'nobody' user and runuser")
        self.dir = Path(tempfile.mkdtemp(prefix="ctxkit-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.url = f"postgresql://ctxkit@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.dir)

    def start(self) -> PostgresServer:
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        res = self._run(self.initdb, "-D", str(self.data), "-U", "ctxkit", "--auth=trust", "-E", "UTF8",
                        "--no-locale", "--no-sync")
        if res.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {res.stderr.strip()[-800:]}")
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                "-c fsync=on -c max_connections=200")
        res = self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.dir / "server.log"), "-o", opts,
                        "-w", "-t", "60", "start")
        if res.returncode != 0:
            log = (self.dir / "server.log").read_text(errors="replace")[-800:] if (self.dir / "server.log").exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {res.stderr.strip()[-400:]} {log}")
        return self

    def new_database(self) -> str:
        """A fresh, empty database on the server; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
