"""A PostgreSQL server of a test's (or a bench's) own: initdb and pg_ctl in a folder of its
own, so restarting it, cutting it off or loading extensions into it disturbs no other test
and leaves the machine's shared server as it is."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.helpers.services import free_port


def server_binaries() -> Path | None:
    """The newest PostgreSQL's bin folder, or None where no server is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    """One cluster, trust auth, listening on `address` only.

    `wrap` turns a command line into one that runs where the server should (inside a
    network namespace, say); `clients` is a network (CIDR) whose hosts may connect besides
    the server's own address; `settings` are its `-c` options.
    """

    def __init__(self, bin_dir: Path, *, home: Path | None = None, address: str = "127.0.0.1",
                 port: int | None = None, settings: Mapping[str, str] | None = None,
                 clients: str | None = None,
                 wrap: Callable[[Sequence[str]], list[str]] = list) -> None:
        self.bin = bin_dir
        self.version = bin_dir.parent.name
        self.home = home or Path(tempfile.mkdtemp(prefix="vlmq-pg-"))
        self.data = self.home / "data"
        self.address = address
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.clients = clients
        self.wrap = wrap
        self.url = f"postgresql://postgres@{address}:{self.port}/postgres"
        if os.geteuid() == 0:  # initdb refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.home, user.pw_uid, user.pw_gid)

    def run(self, tool: str, *args: str) -> str:
        argv = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(self.wrap(argv), check=True, capture_output=True, text=True,
                              timeout=120).stdout

    def start(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        if self.clients is not None:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.clients} trust\n")
        options = " ".join([f"-p {self.port}", f"-k {self.home}",
                            f"-c listen_addresses={self.address}",
                            *(f"-c {k}={v}" for k, v in self.settings.items())])
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options,
                 "-w", "start")

    @property
    def log_path(self) -> Path:
        return self.home / "postgres.log"

    def restart(self) -> None:
        """`-m fast`: every open connection is cut, as in a failover or an upgrade."""
        # The log again: without it the server would hold this call's output pipes open.
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-m", "fast", "-w",
                 "restart")

    def destroy(self) -> None:
        try:
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.home, ignore_errors=True)
