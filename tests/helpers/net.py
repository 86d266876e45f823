"""Where this machine can be reached, for tests of what a service exposes."""

from __future__ import annotations

import socket


def non_loopback_address() -> str | None:
    """An address of this machine that other machines could reach it at, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            # UDP connect sends nothing; it only picks the interface a route would use.
            sock.connect(("192.0.2.123", 9))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False
