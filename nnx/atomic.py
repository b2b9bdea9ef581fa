"""Atomic file writes: a reader never sees half a file under the target name.

The data go to a temporary file in the target's folder, named
``.nnx-<tag>-<pid>-<random>.tmp`` (``tag``: a hash of the target's name, so the name
fits next to any legal file name), and are moved into place with ``os.replace``: an
interruption (an error, Ctrl-C, ``kill -9``) leaves the previous file intact. Every
write first removes the temporary files of the same target left by writers that no
longer run (their process id is gone, or the file is a day old).

Like ``open(path, "w")`` (and ``np.savez``, ``torch.save``): a symbolic link is
written through to its target; an existing file keeps its mode (and owner, where
permitted); a new file gets the umask's mode; a file with several hard links is
rewritten in place after the new content is complete on disk, so that every link sees
it. That case alone is not atomic: it is refused before the file is touched when its
file system has no room for it to grow, and if the copy fails anyway the complete new
content is kept next to it as ``<name>.new``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open"]

_CHUNK = 1 << 20


def _tag(name: str) -> str:
    return hashlib.sha1(os.fsencode(name)).hexdigest()[:12]


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale(target: Path) -> None:
    """Remove temporary files of killed writers of ``target`` (dead pid, or a day old)."""
    prefix = f".nnx-{_tag(target.name)}-"
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            pid_text = name[len(prefix) :].split("-", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                old = time.time() - entry.stat(follow_symlinks=False).st_mtime > 86_400
                if old or not _alive(int(pid_text)):
                    os.unlink(entry.path)


def _check_room(target: Path, growth: int) -> None:
    """Refuse, before touching ``target``, to rewrite it in place when its file system
    has not room for it to grow by ``growth`` bytes (a full disk would leave it half
    written)."""
    if growth <= 0 or not hasattr(os, "statvfs"):
        return
    vfs = os.statvfs(target.parent)
    free = vfs.f_bavail * vfs.f_frsize
    if free < growth + vfs.f_frsize:
        raise OSError(
            errno.ENOSPC,
            f"no room to rewrite {str(target)!r} in place ({growth} more bytes needed, "
            f"{free} free); it was left as it was",
        )


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", fsync: bool = False, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success move it over ``path``
    (``os.replace``), on any error remove it. ``fsync``: flush to disk before the move
    (and the folder after it). See the module documentation for links and modes.

    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with atomic_open(target, "w") as f:
    ...     _ = f.write("done")
    >>> open(target).read()
    'done'
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open: mode must write ('w', 'wb'...), got {mode!r}")
    target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        error = IsADirectoryError if stat.S_ISDIR(st.st_mode) else OSError
        raise error(f"cannot write {str(path)!r}: it exists and is not a regular file")
    _remove_stale(target)
    tmp = target.parent / f".nnx-{_tag(target.name)}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666 if st is None else 0o600)  # umask applies to 0o666
    linked = st is not None and st.st_nlink > 1
    try:
        if st is not None:
            with contextlib.suppress(OSError, AttributeError):
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            with contextlib.suppress(OSError, AttributeError):
                os.fchown(fd, st.st_uid, st.st_gid)
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            if fsync or linked:
                f.flush()
                os.fsync(f.fileno())
        if linked and st is not None:  # every link must see the new content: in place
            _check_room(target, os.path.getsize(tmp) - st.st_size)
            try:
                with open(tmp, "rb") as src, open(target, "r+b") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                    out.truncate()
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:  # the target may be half written: keep the new content
                rescue = target.parent / f"{target.name}.new"
                os.replace(tmp, rescue)
                raise OSError(
                    exc.errno,
                    f"rewriting {str(path)!r} in place (it has {st.st_nlink} hard links) "
                    f"failed: {exc.strerror}; the complete new content is in {str(rescue)!r}",
                ) from exc
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
            if fsync:
                _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
