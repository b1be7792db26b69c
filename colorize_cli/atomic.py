"""Writing files so that a reader never sees half of one: temporary file, fsync, rename."""

from __future__ import annotations

import os
import re
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
#: temporaries and claims whose owner cannot be checked (another machine's, or an older naming without a
#: pid) are taken as abandoned after this long
FOREIGN_AGE_S = 3600

_live: set[str] = set()          # this process's temporaries being written
_live_lock = threading.Lock()


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a hidden temporary file beside ``path``; on success it replaces ``path``, on error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-h{HOST}-", suffix=TEMP_SUFFIX, dir=path.parent)
    with _live_lock:
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
    writer threads may still hold them). Returns how many were removed."""
    with _live_lock:
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


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Remove temporaries in ``folder`` that no live run owns: those of a pid that is gone on this machine (a
    run killed with SIGKILL, or a machine that rebooted), and those of another machine or of an older
    naming after an hour."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        m = _TEMP_NAME.match(name)
        if m is None:
            continue
        full = os.path.join(folder, name)
        try:
            pid = int(m.group(1)) if m.group(1) is not None else None
            if owner_alive(pid, m.group(2), os.stat(full).st_mtime):
                continue
            os.unlink(full)
            removed += 1
        except OSError:
            continue
    return removed
