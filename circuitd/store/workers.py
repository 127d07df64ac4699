"""Who holds a job: worker ids that stay unique across hosts and containers.

``hostname:pid`` is not enough: every container's first process is pid 1 and hostnames
may repeat. An id is ``hostname:pid:tag.random``, where ``tag`` names the pid namespace
(the kernel's boot id and the namespace's inode) and ``random`` is drawn once per process.
The tag also says when a holder's pid is ours to check: only a holder in this very pid
namespace can be declared dead because its process is gone. Imports no torch.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import socket

_ids: dict[int, str] = {}  # pid -> id: a forked child draws its own


@functools.cache
def namespace_tag() -> str:
    """Eight hex digits naming this host's boot and this pid namespace ('' without /proc)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return hashlib.sha256(f"{boot}|{pidns}".encode()).hexdigest()[:8]


def worker_id() -> str:
    """This process's id, ``hostname:pid:tag.random``."""
    pid = os.getpid()
    if pid not in _ids:
        _ids[pid] = f"{socket.gethostname()}:{pid}:{namespace_tag()}.{secrets.token_hex(4)}"
    return _ids[pid]


def holder_is_dead(holder: str | None) -> bool:
    """True when nobody holds the job, or its holder ran in this pid namespace and its process is gone
    (a killed pool child): it can be taken over without waiting for its heartbeat to go stale."""
    if not holder:
        return True
    parts = holder.split(":")
    if len(parts) != 3:
        return False
    host, pid, suffix = parts
    tag = suffix.partition(".")[0]
    if host != socket.gethostname() or tag != namespace_tag() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
