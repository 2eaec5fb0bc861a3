"""Ray only inside a loopback-only network namespace; clients reach it through a Unix socket.

Ray advertises and listens on non-loopback addresses even when told 127.0.0.1 (issue 12),
so everything that starts Ray here runs in a fresh network namespace that has only `lo`
(`unshare -n`, then `ip link set lo up`; needs root, as CI has). Clients outside it talk to
127.0.0.1:PORT of the host; a bridge carries each connection over a Unix socket (a file
path, which network namespaces do not separate) to 127.0.0.1 inside, where Serve listens.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

LOOPBACK = "127.0.0.1"


def interfaces() -> list[str]:
    """Network interfaces of this process's namespace (/proc/self/net/dev is per namespace,
    unlike /sys/class/net)."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


def loopback_only() -> bool:
    return interfaces() == ["lo"]


def why_no_namespace() -> str | None:
    """None when `unshare -n` works here, else why not (in words)."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command is missing (util-linux / iproute2)"
    try:
        done = subprocess.run(loopback_command(["true"]), capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`unshare -n` failed: {e}"
    if done.returncode != 0:
        who = "" if os.geteuid() == 0 else " (it needs root or CAP_SYS_ADMIN)"
        return f"`unshare -n` failed{who}: {done.stderr.strip()[-300:]}"
    return None


def loopback_command(argv: list[str]) -> list[str]:
    """`argv` run in a new network namespace whose only interface, lo, is up."""
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # already gone
            pass


async def _join(reader, writer, open_other) -> None:
    try:
        other_reader, other_writer = await open_other()
    except OSError:
        writer.close()
        return
    await asyncio.gather(_pipe(reader, other_writer), _pipe(other_reader, writer))


async def serve_tcp_to_unix(port: int, socket_path: str, host: str = LOOPBACK):
    """Outside: 127.0.0.1:port -> the Unix socket. Returns the asyncio server."""
    return await asyncio.start_server(
        lambda r, w: _join(r, w, lambda: asyncio.open_unix_connection(socket_path)),
        host, port)


async def serve_unix_to_tcp(socket_path: str, port: int, host: str = LOOPBACK):
    """Inside the namespace: the Unix socket -> 127.0.0.1:port (Serve's HTTP proxy)."""
    return await asyncio.start_unix_server(
        lambda r, w: _join(r, w, lambda: asyncio.open_connection(host, port)), socket_path)
