"""Who holds a lease: the holder process's identity, and whether that process is provably dead.

A lease records the machine (host name, kernel boot id, pid namespace), the pid and the
process start time of the process that took it. A contender on the same machine, in the same
pid namespace, can then tell from ``/proc`` that the holder is gone (no such pid, a zombie,
or the pid reused by a process that started at another time) and take the session over at
once instead of waiting for the lease to expire. Anything else (another machine, another
container, a platform without ``/proc``, a process it cannot inspect) counts as alive, and
the lease expires as before.

Reading ``/proc`` happens only when a live lease of another holder is found, on the thread
that owns the connection.
"""

from __future__ import annotations

import os
import socket
from typing import NamedTuple

__all__ = ["Holder", "current_holder", "holder_is_dead", "process_start"]


class Holder(NamedTuple):
    """A lease holder's identity; ``host`` is None where liveness cannot be checked."""

    host: str | None
    pid: int
    start: int | None


_cache: dict[int, Holder] = {}  # keyed by pid, so a forked child computes its own


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state first), or None when the pid does not exist.

    The command name (field 2) is in parentheses and may hold spaces or parentheses itself,
    so the fields are taken after the last ``)``.
    """
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    return text[text.rfind(")") + 2 :].split()


def _start_time(fields: list[str] | None) -> int | None:
    # Field 22, starttime (clock ticks after boot), is the 20th after the command name.
    try:
        return int(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None when there is none."""
    return _start_time(_stat_fields(pid))


def _host() -> str | None:
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    if not boot or not namespace:
        return None
    return f"{socket.gethostname()}/{boot}/{namespace}"


def current_holder() -> Holder:
    """This process's identity (computed once per process)."""
    pid = os.getpid()
    holder = _cache.get(pid)
    if holder is None:
        start = _start_time(_stat_fields(pid))
        host = _host() if start is not None else None
        holder = _cache[pid] = Holder(host, pid, start)
    return holder


def holder_is_dead(host: str | None, pid: int | None, start: int | None) -> bool:
    """True only when the recorded holder is provably not running any more.

    Provable means: recorded on this machine, in this pid namespace, and its pid is gone, a
    zombie, or now belongs to a process started at another time.
    """
    me = current_holder()
    if me.host is None or host != me.host or pid is None or start is None:
        return False
    if pid == me.pid:
        return start != me.start
    fields = _stat_fields(pid)
    if fields is None:
        # /proc may hide other users' processes (hidepid): ask the kernel directly.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    if fields and fields[0] in ("Z", "X"):
        return True
    return _start_time(fields) != start
