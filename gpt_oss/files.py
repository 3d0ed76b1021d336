"""Files that survive their writer being killed: written under a temporary name beside the
target, fsynced, then renamed over it; and the temporaries that killed writers leave behind,
recognised and removed.

A temporary is named `.<target name>.<pid>@<host>.tmp` (`.last.pt.4242@node1.tmp`), so a later
process can tell whether its writer is still alive: on the same host, `kill(pid, 0)` answers;
a temporary of another host (a shared filesystem) is left alone, since its writer may be alive
there. Names without `@<host>` (`.train.bin.4242.tmp`, older versions) count as this host's.

Also here: where a text file stops being UTF-8, for errors that name the file and the byte.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import os
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)(?:@(?P<host>[^/]+))?\.tmp$")
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space left on device (or quota exceeded) for a write; says where and how much."""

    def __str__(self) -> str:
        return str(self.strerror)


def temporary_path(path: str | Path) -> Path:
    """The temporary name a write of `path` goes to before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}@{socket.gethostname()}.tmp")


def is_temporary(path: str | Path) -> bool:
    """True for a name temporary_path gives (a write that was never finished or renamed)."""
    return _TEMPORARY.match(Path(path).name) is not None


def writer_alive(path: str | Path) -> bool:
    """Whether the process that named this temporary may still be writing it (unknown: True)."""
    match = _TEMPORARY.match(Path(path).name)
    if match is None:
        return True
    if match["host"] not in (None, socket.gethostname()):
        return True  # another host's writer: cannot tell from here
    pid = int(match["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporaries (files or directories) in `directory` whose writer is dead;
    returns what was removed. A missing directory holds none."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.iterdir()):
        if is_temporary(path) and not writer_alive(path):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def sha256_file(path: str | Path, block_bytes: int = 16 * 1024**2) -> str:
    """sha256 (hex) of a file, read in blocks so memory stays flat for multi-GB files."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def format_bytes(num_bytes: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def check_free_space(path: str | Path, needed_bytes: int) -> None:
    """DiskFullError before writing `needed_bytes` to `path` when its filesystem has less free."""
    path = Path(path)
    free = shutil.disk_usage(path.parent).free
    if needed_bytes > free:
        raise DiskFullError(
            errno.ENOSPC,
            f"no space left on device for {path}: it needs about {format_bytes(needed_bytes)}, "
            f"{format_bytes(free)} free there; free some space (or write elsewhere) and run again",
        )


def atomic_write(
    path: str | Path, write: Callable[[BinaryIO], None], needed_bytes: int = 0
) -> Path:
    """write(file) to a temporary beside `path`, fsync, rename over `path`; the old file stays
    whole until the rename. needed_bytes > 0 is checked against the free space first.

    Raises DiskFullError (naming the path and the size) when the disk fills during the write;
    the temporary is removed on any failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if needed_bytes:
        check_free_space(path, needed_bytes)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:  # torch's writer wraps ENOSPC in a RuntimeError
        if _out_of_space(error, tmp):
            written = tmp.stat().st_size if tmp.exists() else 0
            needed = f"it needs about {format_bytes(needed_bytes)}, " if needed_bytes else ""
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on device writing {path}: {needed}the disk filled after "
                f"{format_bytes(written)}; free some space (or write elsewhere) and run again",
            ) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _out_of_space(error: BaseException, tmp: Path) -> bool:
    """ENOSPC or EDQUOT anywhere in the chain, or (torch keeps no errno) a full filesystem."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in _OUT_OF_SPACE:
            return True
        cause = cause.__cause__ or cause.__context__
    try:
        usage = os.statvfs(tmp.parent)
    except OSError:
        return False
    return usage.f_bavail * usage.f_frsize < 64 * 1024  # less than a block or two left


def utf8_error(path: str | Path, block_bytes: int = 16 << 20) -> str | None:
    """Where a file stops being UTF-8 ("byte 0xff at offset 1234 (line 7)"), None when it is
    valid; read in blocks, so memory stays flat for large files."""
    offset, pending = 0, b""
    with open(path, "rb") as handle:
        while True:
            block = handle.read(block_bytes)
            data = pending + block
            if data.isascii():  # most of most corpora: no decoding needed
                offset, pending = offset + len(data), b""
                if not block:
                    return None
                continue
            try:
                _, consumed = codecs.utf_8_decode(data, "strict", not block)
            except UnicodeDecodeError as error:
                bad = offset + error.start
                return (
                    f"byte 0x{data[error.start]:02x} at offset {bad} (line {_line_of(path, bad)})"
                )
            offset, pending = offset + consumed, data[consumed:]
            if not block:
                return None


def _line_of(path: str | Path, offset: int) -> int:
    """The 1-based line number of byte `offset`."""
    with open(path, "rb") as handle:
        return handle.read(offset).count(b"\n") + 1


def utf8_message(path: str | Path, where: str) -> str:
    """The error text for a file that is not UTF-8 (where: from utf8_error)."""
    return (
        f"{path} is not UTF-8 text: {where} is invalid; convert the file to UTF-8 "
        "(e.g. `iconv -f latin1 -t utf-8`) or fix that line"
    )
