"""Test helpers for servers our code starts: which addresses a process group listens on (read from /proc, Linux),
whether another interface reaches them, and stopping exactly the group a test started."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

PROC = Path("/proc")


def has_proc_net() -> bool:
    return (PROC / "net" / "tcp").is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_pids(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid` (a session leader started with start_new_session=True)."""
    pids = []
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            pids.append(int(stat.parent.name))
    return pids


def tree_pids(root: int) -> list[int]:
    """`root` and its live descendants, whatever their process group or session."""
    children: dict[int, list[int]] = {}
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _address(hex_ip: str) -> ipaddress._BaseAddress:
    raw = bytes.fromhex(hex_ip)
    # /proc/net/tcp{,6} print the address as 32-bit words in host (little-endian) order.
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def listening_addresses(pids) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by any of `pids`."""
    inodes = set().union(*(_socket_inodes(pid) for pid in pids)) if pids else set()
    found = set()
    for table in ("tcp", "tcp6"):
        path = PROC / "net" / table
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], int(cols[9])
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                hex_ip, hex_port = local.split(":")
                found.add((str(_address(hex_ip)), int(hex_port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def non_loopback_ipv4() -> list[str]:
    """This machine's own IPv4 addresses other than 127.x (the LOCAL host entries of /proc/net/fib_trie)."""
    path = PROC / "net" / "fib_trie"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    found = {lines[i - 1].split()[-1] for i, line in enumerate(lines) if "/32 host LOCAL" in line and i > 0}
    return sorted(a for a in found if not ipaddress.ip_address(a).is_loopback)


def refuses(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return False
    except OSError:
        return True


def wait_http_ok(url: str, timeout_s: float, alive) -> bool:
    """Poll `url` until it answers 200; False when `alive()` turns false or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (loopback)
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def stop_group(pgid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM the process group a test started, SIGKILL what is left after `timeout_s`."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
