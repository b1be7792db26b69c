"""Writing files so that a reader never sees half of one: temporary file, fsync, rename."""

from __future__ import annotations

import os
import re
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: read once, at import: setting the umask to read it is process-wide, and done per file it would race
#: with the writer threads' mkdir (a folder made in that moment would get mode 0777)
_UMASK = _read_umask()


def _host_tag() -> str:
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


#: this machine, in temporaries' names and claims: on storage shared by several machines (a cluster), a
#: pid says whether its process lives only on the machine that wrote it
HOST = _host_tag()
#: temporaries are named ``.colorize-<pid>-h<host>-<random>.part``: the pid and host say which run owns one
TEMP_PREFIX, TEMP_SUFFIX = ".colorize-", ".part"
_TEMP_NAME = re.compile(r"^\.colorize-(?:(\d+)-)?(?:h([0-9a-f]{8})-)?[A-Za-z0-9_]+\.part$")
#: a claim on an input, ``.SHEET.colorize-claim``, holds "pid host run" (batch._claim)
CLAIM_SUFFIX = ".colorize-claim"
#: temporaries and claims whose owner cannot be checked (another machine's, or an older naming without a
#: pid) are taken as abandoned after this long
FOREIGN_AGE_S = 3600

_live: set[str] = set()          # this process's temporaries being written
_live_lock = threading.Lock()
_ending = False                  # remove_live_temporaries ran: the process is exiting, no new temporaries


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a hidden temporary file beside ``path``; on success it replaces ``path``, on error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # made and registered under the lock, and refused once the interrupt's sweep has run: a writer thread
    # between mkstemp and registering, or starting its next file (--separate writes several) while the process
    # was exiting, left a temporary behind (a SIGTERM test caught one)
    with _live_lock:
        if _ending:
            raise InterruptedError("the run is ending: no new files")
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-h{HOST}-", suffix=TEMP_SUFFIX,
                                   dir=path.parent)
        _live.add(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; give outputs the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        with _live_lock:
            _live.discard(tmp)


def remove_live_temporaries() -> int:
    """Remove the temporaries this process is writing (on SIGTERM/SIGHUP/Ctrl-C, before exiting, while
    writer threads may still hold them), and refuse new ones from then on: the process is ending. Returns how
    many were removed. (A writer whose temporary went carries on into an unlinked file; its rename fails and
    nothing is written under the output's name.)"""
    global _ending
    with _live_lock:
        _ending = True
        paths = list(_live)
        _live.clear()
    removed = 0
    for tmp in paths:
        try:
            os.unlink(tmp)
            removed += 1
        except OSError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        return True
    return True


def owner_alive(pid: int | None, host: str | None, mtime: float) -> bool:
    """Whether the process that made a temporary or a claim may still be at work: this machine's (``host``
    None or ours) by its pid; another machine's, or one without a pid, by its age (FOREIGN_AGE_S)."""
    if pid is not None and host in (None, HOST):
        return pid == os.getpid() or pid_alive(pid)
    return time.time() - mtime < FOREIGN_AGE_S


#: a claim is one short line; nothing past this is read
CLAIM_MAX_BYTES = 512


def read_claim(path: str | os.PathLike) -> tuple[int, str | None, str | None]:
    """A claim's (pid, host, run); a claim of an older version holds the pid alone; unreadable: (0, None, None).
    Only a regular file is read, and only its first bytes: a FIFO or a link to a device under a claim's name
    cannot hang or fill a run (opened without blocking, not read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return 0, None, None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0, None, None
        parts = os.read(fd, CLAIM_MAX_BYTES).decode("ascii").split()
        return int(parts[0]) if parts else 0, (parts[1] if len(parts) > 1 else None), (
            parts[2] if len(parts) > 2 else None)
    except (OSError, ValueError, UnicodeDecodeError):
        return 0, None, None
    finally:
        os.close(fd)


def is_foreign_claim(path: str | os.PathLike) -> bool:
    """Something under a claim's name that no run made: not a regular file (a FIFO, a link, a device)."""
    try:
        return not stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def remove_stale(folder: str | os.PathLike) -> int:
    """Remove the temporaries and claims in ``folder`` that no live run owns (one listing): those of a pid
    that is gone on this machine (a run killed with SIGKILL, or a machine that rebooted), and those of
    another machine or of an older naming after an hour. A claim matters too: a run killed after an output
    landed but before it released the claim leaves one no later run takes over (that input is skipped as
    done). An empty claim may be one a live run has just made and not yet written: kept for a minute."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        full = os.path.join(folder, name)
        m = _TEMP_NAME.match(name)
        try:
            if m is not None:
                pid, host = (int(m.group(1)) if m.group(1) is not None else None), m.group(2)
                stale = not owner_alive(pid, host, os.stat(full).st_mtime)
            elif name.startswith(".") and name.endswith(CLAIM_SUFFIX):
                if is_foreign_claim(full):   # no run made it; in the way of every claim of that photo
                    os.unlink(full)
                    removed += 1
                    continue
                pid, host, _ = read_claim(full)
                mtime = os.stat(full).st_mtime
                stale = not owner_alive(pid, host, mtime) if pid else time.time() - mtime >= 60
            else:
                continue
            if stale:
                os.unlink(full)
                removed += 1
        except OSError:
            continue
    return removed
