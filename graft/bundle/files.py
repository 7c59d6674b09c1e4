"""Durable file operations for bundles: sha256, atomic writes, a lock, atomic directory swaps.

Everything here is the standard library only. A write goes to a temporary
name in the same directory, is fsynced, renamed into place, and the directory
is fsynced after the rename, so a crash leaves the old bytes or the new ones,
never a mix, and never a name pointing at unwritten data.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".graft.lock"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or unlink in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    The temporary file is created with mode 0666 filtered by the process umask (as
    any new file is), without changing the umask. An interrupted or failed write
    leaves neither a half-written file nor the temporary one behind. ``suffix``
    ends the temporary name (some writers check it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, suffix)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        fsync_dir(path.parent)      # and the name itself survives a crash
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def locked(directory: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (a ``.graft.lock`` file in it) while inside.

    Read-modify-write cycles of a bundle's files happen under this lock, so two
    processes changing one bundle never lose each other's updates. Where
    ``fcntl`` is missing (not POSIX) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(directory, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # a rebuild swapped the directory while we waited: lock the new one
    try:
        yield
    finally:
        os.close(fd)  # closing releases the lock


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_directory(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete directory ``new`` at ``target``, replacing what was there.

    Where the OS can swap two names atomically (Linux), ``target`` is always
    either the old directory or the new one, even if the process dies mid-swap;
    the old one ends up at ``new``'s name and is deleted. Elsewhere, two renames:
    the old one moves aside to ``.NAME.old``, the new one takes its name, and
    ``recover_directory`` (called before every build) puts the old one back if a
    crash fell between them.
    """
    new, target = Path(new), Path(target)
    if target.exists() and exchange(new, target):
        fsync_dir(target.parent)
        shutil.rmtree(new, ignore_errors=True)
        return
    aside = target.parent / f".{target.name}.old"
    if aside.exists():
        shutil.rmtree(aside)
    if target.exists():
        os.rename(target, aside)
    os.rename(new, target)
    fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


def recover_directory(target: str | os.PathLike) -> None:
    """Undo a swap that a crash interrupted: restore ``.NAME.old`` if ``NAME`` is missing,
    and remove build directories (``.NAME.build-*``) that no process is writing."""
    target = Path(target)
    aside = target.parent / f".{target.name}.old"
    if aside.exists():
        if target.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(aside, target)
            fsync_dir(target.parent)
    for leftover in target.parent.glob(f".{target.name}.build-*"):
        if not _held(leftover):
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def staging_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A new, locked ``.NAME.build-*`` directory beside ``target``, removed on exit unless swapped in.

    It is made and locked under another name first, so ``recover_directory`` never sees a
    build directory without its lock.
    """
    target = Path(target)
    token = secrets.token_hex(4)
    preparing = target.parent / f".{target.name}.prep-{token}"
    staging = target.parent / f".{target.name}.build-{token}"
    preparing.mkdir(parents=True)
    try:
        with locked(preparing):
            os.rename(preparing, staging)
            yield staging
    finally:
        for path in (preparing, staging):
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)


def _held(directory: Path) -> bool:
    """Whether a live process holds the lock of a build directory."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    finally:
        os.close(fd)
