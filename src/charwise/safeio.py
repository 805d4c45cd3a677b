"""Writing files that cannot be redirected or half-written: whole files through a temporary
file in the same folder that is fsynced and renamed over the target (a symlink there is
replaced, never followed), appends and truncations that refuse to follow a symlink, and the
user's umask for every file (a temporary file would otherwise stay 0600)."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from charwise.errors import CharwiseError

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def file_mode() -> int:
    """The mode a new file gets from the user's umask (0o666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write path through a temporary file beside it: write(f), fsync, chmod, rename, fsync the
    folder. A crash leaves the old file; a symlink at path is replaced, not followed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text(path: str | Path, text: str) -> None:
    """A whole UTF-8 text file, written atomically (newlines as given)."""
    data = text.encode("utf-8")
    write_atomic(path, lambda f: f.write(data))


def open_fd_nofollow(path: str | Path, flags: int) -> int:
    """os.open(path, flags | O_NOFOLLOW | O_CLOEXEC) with the user's umask for a new file."""
    return os.open(path, flags | NOFOLLOW | getattr(os, "O_CLOEXEC", 0), file_mode())


def open_nofollow(path: str | Path, flags: int):
    """A binary file object opened with os.open(flags | O_NOFOLLOW): a symlink is an error."""
    try:
        fd = open_fd_nofollow(path, flags)
    except OSError as exc:
        if Path(path).is_symlink():
            raise CharwiseError(
                f"{path} is a symbolic link; charwise writes only regular files in a run "
                "directory: remove the link"
            ) from None
        raise exc
    return os.fdopen(fd, "ab" if flags & os.O_APPEND else "r+b")


def append(path: str | Path, data: bytes) -> None:
    """Append to path (created if missing), never through a symlink."""
    with open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) as f:
        f.write(data)


def read_from(path: str | Path, offset: int = 0) -> bytes:
    """The bytes of a regular file from offset on, never through a symlink and never waiting
    on a FIFO or device (OSError: missing, a link, not a regular file)."""
    with os.fdopen(open_fd_nofollow(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        f.seek(offset)
        return f.read()


def truncate(path: str | Path, size: int) -> None:
    """Cut path to size bytes and fsync it, never through a symlink."""
    with open_nofollow(path, os.O_RDWR | os.O_CREAT) as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def fsync(path: str | Path) -> None:
    """Flush a file to the disk (opened without following a symlink)."""
    with open_nofollow(path, os.O_WRONLY | os.O_APPEND) as f:
        os.fsync(f.fileno())
