"""Several hosts on one machine, for tests across a network: Linux network namespaces, each
joined by a veth pair to a bridge inside a hub namespace, on a private /24 the test picks.

Nothing here touches the machine's own network: the namespaces have no route out, so
traffic stays between the namespaces a `Network` made and their loopbacks. A link is cut by
taking its port on the bridge down (the host then hears nothing, as across a failed
switch), and one address is cut off from one host by routing it, on that host alone, to a
next hop that does not exist.

Every name starts with `vlmqt-<pid of the test process>-`, so `remove_leftovers` can tell
a crashed run's namespaces (their pid is gone) from a live run's.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "vlmqt-"
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = Path("/run/netns")
_NOWHERE_MAC = "02:00:00:00:00:01"  # locally administered; no interface here has it
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why this machine cannot make network namespaces (the reason a test skips), or None."""
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _setns(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def enter(netns: str) -> None:
    """Moves the calling thread (only it) into `netns`: sockets it opens from now on live
    there. Meant for a pool's thread initializer; the threads end with the pool."""
    _setns(_NETNS_DIR / netns)


@contextmanager
def entered(netns: str) -> Iterator[None]:
    """Sockets the calling thread opens inside the block live in `netns`, and stay there
    (a listening socket keeps accepting there when served from another thread)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter(netns)
        try:
            yield
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail as root
                raise OSError(ctypes.get_errno(), "setns back to the thread's own namespace")
    finally:
        os.close(home)


def _pids_in(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in out.split()]


def _kill_and_delete(netns: str) -> None:
    for pid in _pids_in(netns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _ip("netns", "del", netns, check=False)


def _owner_alive(netns: str) -> bool:
    try:
        pid = int(netns[len(PREFIX):].split("-", 1)[0])
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def remove_leftovers() -> list[str]:
    """Deletes the namespaces (and what runs in them) of earlier test processes that died
    without cleaning up, and their folders named like them in the temporary directory (see
    `Network.temp_dir`); a live process's are left alone."""
    names = [line.split()[0] for line in _ip("netns", "list", check=False).splitlines() if line]
    gone = [n for n in names if n.startswith(PREFIX) and not _owner_alive(n)]
    for name in gone:
        _kill_and_delete(name)
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        if not _owner_alive(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(str(folder))
    return gone


def _pick_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.213.0.0/16 that no route of this machine's own namespace covers, so an
    address in the test's network can never be mistaken for a real one in its logs."""
    taken = []
    for line in _ip("-4", "route", "show", "table", "all", check=False).splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest and dest[0].isdigit():
            taken.append(ipaddress.ip_network(dest, strict=False))
    candidates = list(range(256))
    random.shuffle(candidates)
    for third in candidates:
        net = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free /24 in 10.213.0.0/16")


@dataclass(frozen=True)
class Host:
    """A namespace with one address on the test's network."""

    role: str
    netns: str
    address: str
    port: str  # its interface on the hub's bridge (the hub's own: the bridge)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this host (`ip netns exec` sets the namespace, then execs)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.wrap(argv), **kwargs)


class Network:
    """A hub namespace with a bridge, and hosts joined to it by veth pairs.

    The hub is a host too (address .1): servers that every host reaches live there. Call
    `destroy` in a `finally`: it kills whatever still runs in the namespaces, then deletes them.
    """

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}-{random.randrange(16**4):04x}"
        self.subnet = _pick_subnet()
        self._next = 10
        self._names: list[str] = []
        hub = self._namespace("hub")
        _ip("link", "add", "br0", "type", "bridge", netns=hub)
        _ip("addr", "add", f"{self._addr(1)}/24", "dev", "br0", netns=hub)
        _ip("link", "set", "br0", "up", netns=hub)
        self.hub = Host("hub", hub, self._addr(1), "br0")

    def temp_dir(self, role: str) -> Path:
        """A new folder for a server's files, found and removed by `remove_leftovers` if
        this process dies before removing it."""
        return Path(tempfile.mkdtemp(prefix=f"{self.tag}-{role}-"))

    def _addr(self, n: int) -> str:
        return str(self.subnet.network_address + n)

    def _namespace(self, role: str) -> str:
        name = f"{self.tag}-{role}"
        _ip("netns", "add", name)
        self._names.append(name)
        _ip("link", "set", "lo", "up", netns=name)
        return name

    def add_host(self, role: str) -> Host:
        netns = self._namespace(role)
        address = self._addr(self._next)
        self._next += 1
        port = f"p-{role}"[:15]
        # Both ends are made inside their namespaces, never in the machine's own.
        _ip("link", "add", port, "netns", self.hub.netns, "type", "veth",
            "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", port, "master", "br0", netns=self.hub.netns)
        _ip("link", "set", port, "up", netns=self.hub.netns)
        _ip("addr", "add", f"{address}/24", "dev", "eth0", netns=netns)
        _ip("link", "set", "eth0", "up", netns=netns)
        return Host(role, netns, address, port)

    def add_hub_address(self) -> str:
        """One more address of the hub, for a server that some host must be cut off from
        alone (`strand`) while the hub's others stay reachable."""
        address = self._addr(self._next)
        self._next += 1
        _ip("addr", "add", f"{address}/24", "dev", "br0", netns=self.hub.netns)
        return address

    def cut(self, host: Host) -> None:
        """The host's link goes silent both ways: its packets are dropped at the bridge, so
        its connections hang (not refused) until the link returns, as in a partition."""
        _ip("link", "set", host.port, "down", netns=self.hub.netns)

    def restore(self, host: Host) -> None:
        _ip("link", "set", host.port, "up", netns=self.hub.netns)

    def strand(self, host: Host, address: str) -> None:
        """Packets from `host` to `address` go to a next hop that does not exist, known by a
        made-up hardware address so that nothing even says it is unreachable: they are lost
        without an answer, as across a partition, while the rest of its traffic flows."""
        _ip("neigh", "replace", self._nowhere, "lladdr", _NOWHERE_MAC, "dev", "eth0",
            "nud", "permanent", netns=host.netns)
        _ip("route", "add", f"{address}/32", "via", self._nowhere, netns=host.netns)

    def unstrand(self, host: Host, address: str) -> None:
        _ip("route", "del", f"{address}/32", netns=host.netns, check=False)
        _ip("neigh", "del", self._nowhere, "dev", "eth0", netns=host.netns, check=False)

    @property
    def _nowhere(self) -> str:
        return str(self.subnet.broadcast_address - 1)  # hosts are numbered from .10 up

    def destroy(self) -> None:
        for name in reversed(self._names):
            _kill_and_delete(name)
        self._names.clear()
