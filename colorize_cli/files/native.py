"""What native decoders print on stderr, folded into the line of the input that caused it.

libjpeg prints "Corrupt JPEG data: premature end of data segment" and decodes on; libpng prints "libpng
warning: iCCP: ..."; OpenCV prints "[ WARN:0@1.2] global ..." lines. They go straight to file descriptor 2
and name no file. While a batch runs, ``capture()`` points descriptor 2 at a pipe read by a thread, and
Python's own ``sys.stderr`` at the real stderr (so log lines, the progress bar and its terminal stay as
they were). Each decode is wrapped by ``decoding()``: marker lines written to the pipe before and after it
tell the reader thread which native lines came while it ran. Decodes run in parallel threads, so a line
seen in a decode's window may be another's: a decode whose window saw native lines is decoded again alone
(the others paused), and what that prints is its own. Native lines outside any decode (a library's
warning at load time) are passed on to stderr unchanged.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

_MARK = b"\x1ecolorize-mark "
#: what decoders print about a file (dropped from a parallel window: the decode alone prints it again)
_CODEC_LINE = re.compile(
    rb"^(Corrupt JPEG data|Premature end of JPEG|Invalid SOS|Warning: unknown JFIF|Unsupported marker|"
    rb"Inconsistent progression|Bogus |JPEG datastream|Huffman table|libpng (warning|error)|"
    rb"\[ ?(WARN|ERROR|INFO)|TIFF|[A-Za-z]+: Warning,)")


class _Capture:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.lines: list[str] = []           # native lines seen inside decode windows, in order
        self.marks: dict[bytes, int] = {}    # marker token -> len(lines) when the reader met it
        self.open_windows = 0                # decodes between their two markers, as the reader sees them
        self.gate = _Gate()
        self.counter = 0
        self.lock = threading.Lock()

    def start(self) -> None:
        sys.stderr.flush()
        self.saved = os.dup(2)                       # the real stderr
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self.read_fd = r
        self.py_stderr = sys.stderr
        try:
            fd_backed = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):
            fd_backed = False                        # a test runner's buffer: it never reaches fd 2
        if fd_backed:
            sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(self.saved), "w"), encoding=sys.stderr.encoding,
                                          errors=sys.stderr.errors, line_buffering=True, write_through=True)
        self.thread = threading.Thread(target=self._read, name="colorize-stderr", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        os.dup2(self.saved, 2)                       # closes the pipe's last write end: the reader ends
        self.thread.join(timeout=5)
        os.close(self.read_fd)
        if sys.stderr is not self.py_stderr:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = self.py_stderr
        os.close(self.saved)

    def _forward(self, data: bytes) -> None:
        try:
            os.write(self.saved, data)
        except OSError:
            pass

    def _read(self) -> None:
        # markers are written whole (one write, under PIPE_BUF) but may fall inside another thread's line
        # when a library writes a line in pieces: they are taken out wherever they are
        pending = b""            # bytes not yet parsed
        text = b""               # the current line of other output
        inside = False           # whether that line began inside a decode's window
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            while True:
                at = pending.find(_MARK)
                if at < 0:
                    # all text, but for what may be the first bytes of a marker still being read
                    keep = next((k for k in range(min(len(_MARK) - 1, len(pending)), 0, -1)
                                 if pending.endswith(_MARK[:k])), 0)
                    text, inside = self._text(pending[:len(pending) - keep], text, inside)
                    pending = pending[len(pending) - keep:]
                    break
                text, inside = self._text(pending[:at], text, inside)
                nl = pending.find(b"\n", at)
                if nl < 0:
                    pending = pending[at:]
                    break
                self._marker(pending[at + len(_MARK):nl])
                pending = pending[nl + 1:]
        if text or pending:
            self._line(text + pending, False)

    def _text(self, data: bytes, text: bytes, inside: bool) -> tuple[bytes, bool]:
        """Other output: whole lines to ``_line``; returns the unfinished line and where it began."""
        if not data:
            return text, inside
        parts = data.split(b"\n")
        for i, part in enumerate(parts):
            if not text and (part or i < len(parts) - 1):
                inside = self._inside()   # a line begins here
            if i < len(parts) - 1:
                self._line(text + part, inside)
                text = b""
            else:
                text += part
        return text, inside

    def _inside(self) -> bool:
        with self.cond:
            return self.open_windows > 0

    def _marker(self, body: bytes) -> None:
        kind, token = body.split(b" ", 1)
        with self.cond:
            self.open_windows += 1 if kind == b"start" else -1
            self.marks[token] = len(self.lines)
            self.cond.notify_all()

    def _line(self, line: bytes, inside: bool) -> None:
        if inside and not line.strip():
            return   # a blank line a decoder printed (OpenJPEG prints several per error): it names nothing
        if inside and _CODEC_LINE.match(line.strip()):
            with self.cond:
                self.lines.append(line.decode("utf-8", "replace").strip())
            return
        self._forward(line + b"\n")

    def mark(self, kind: str) -> int:
        """Write a marker into the pipe and wait until the reader has met it: the index of native lines
        seen up to it."""
        with self.lock:
            self.counter += 1
            token = f"{os.getpid()}.{self.counter}".encode()
        os.write(2, _MARK + kind.encode() + b" " + token + b"\n")
        with self.cond:
            self.cond.wait_for(lambda: token in self.marks, timeout=10)
            return self.marks.pop(token, len(self.lines))

    def run(self, decode: Callable[[], T]) -> tuple[T, list[str]]:
        with self.gate.shared():
            start = self.mark("start")
            try:
                result = decode()
            finally:
                end = self.mark("end")
        if end == start:
            return result, []
        # someone printed while this decode ran: decode again alone; what is printed now is this file's
        with self.gate.exclusive():
            start = self.mark("start")
            try:
                result = decode()
            finally:
                end = self.mark("end")
            with self.cond:
                return result, self.lines[start:end]


class _Gate:
    """Many decodes at once (shared), or one alone (exclusive)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.readers = 0
        self.writer = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self.cond:
            self.cond.wait_for(lambda: not self.writer)
            self.readers += 1
        try:
            yield
        finally:
            with self.cond:
                self.readers -= 1
                self.cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self.cond:
            self.cond.wait_for(lambda: not self.writer)
            self.writer = True
            self.cond.wait_for(lambda: self.readers == 0)
        try:
            yield
        finally:
            with self.cond:
                self.writer = False
                self.cond.notify_all()


_active: _Capture | None = None


@contextlib.contextmanager
def capture() -> Iterator[None]:
    """For a batch run: native stderr lines during decodes become the decoded input's warnings."""
    global _active
    if _active is not None or os.name != "posix":
        yield
        return
    cap = _Capture()
    try:
        cap.start()
    except OSError:   # no descriptor 2 to redirect (a daemon with stderr closed): leave things as they are
        yield
        return
    _active = cap
    try:
        yield
    finally:
        _active = None
        cap.stop()


def decoding(decode: Callable[[], T]) -> tuple[T, list[str]]:
    """Run ``decode()``; return its result and the native lines it printed (none when not capturing)."""
    cap = _active
    if cap is None:
        return decode(), []
    return cap.run(decode)
