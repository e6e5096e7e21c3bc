"""Atomic writes of files and package folders, and recovery of what a killed writer left behind.

The guarantee (SPEC.md, "Writes, kills and crashes"): at every instant the destination path holds
the complete old content or the complete new content, never a mix and never nothing (once it has
existed), whatever point a writer is killed at; the next writer (and, for packages, the next
loader) removes or recovers what a killed writer left.

- A file (:class:`TempFile`) is written to ``.<name>.<16 hex>.tmp`` beside it, flushed, fsynced
  and renamed over the destination (``rename(2)`` replaces a file atomically), then the folder is
  fsynced.
- A package folder (:func:`replace_folder`) cannot be replaced by a rename: it is written complete
  inside a private folder ``.<name>.<12 hex>.wptmp/`` beside it, fsynced, then swapped with the
  destination in one step (``renameat2(RENAME_EXCHANGE)`` on Linux, ``renamex_np(RENAME_SWAP)``
  on macOS; a plain rename when there is no destination yet). After the swap the private folder
  holds the old package and is deleted. Where the file system has no exchange, a journal makes
  the two renames recoverable: the writer first writes ``COMMIT`` in its private folder, then moves
  the old package into it (``old``) and the new one into place; a crash between the two leaves
  the destination missing and the next writer or loader moves the new package into place.

Each writer holds an exclusive ``flock`` on its temporary file or private folder until it is done,
so a cleaner removes only leftovers whose writer is dead (the lock went with the process), never a
concurrent writer's work in progress. Where ``fcntl`` is missing (Windows) only a writer's own
leftovers are removed.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import shutil
import sys

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

COMMIT = "COMMIT"  # journal entry: the new package in the private folder is complete
OLD = "old"  # journal fallback: where the previous package waits until the new one is in place


# ------------------------------------------------------------------------------------ locking


def _try_lock(fd: int) -> bool:
    """An exclusive flock on ``fd`` without waiting; False if another process holds one."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _same_inode(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a cleaner may have removed it)."""
    try:
        here, there = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _leftovers(path: str, suffix: str, token_hex: int):
    """Paths of hidden siblings ``.<name>.<token>.<suffix>`` of ``path`` (any writer's)."""
    folder, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{{token_hex}}}\.{suffix}\Z")
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    return [os.path.join(folder, entry) for entry in entries if pattern.match(entry)]


@contextlib.contextmanager
def _if_abandoned(leftover: str, directory: bool):
    """Yield True (holding its lock) when ``leftover``'s writer is gone, else False."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(leftover, flags)
    except OSError:  # gone already, or not ours to touch
        yield False
        return
    try:
        yield _try_lock(fd) and _same_inode(fd, leftover)
    finally:
        os.close(fd)


def fsync_folder(folder: str) -> None:
    """Make renames in ``folder`` durable (POSIX; Windows has no folder handles to sync)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """fsync every file and folder under ``root``."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_folder(folder)


# -------------------------------------------------------------------------------------- files


def clean_files(path) -> list:
    """Remove the temporary files killed writers of ``path`` left (``.<name>.<hex>.tmp``); return them."""
    removed = []
    for leftover in _leftovers(os.fspath(path), "tmp", 16):
        with _if_abandoned(leftover, directory=False) as abandoned:
            if abandoned:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
                removed.append(leftover)
    return removed


class TempFile:
    """A locked temporary file beside ``path`` that :meth:`commit` renames over it.

    Opening one first removes what killed writers of ``path`` left. ``file`` is the open binary
    file; :meth:`discard` deletes it instead.

    >>> import os, tempfile
    >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "a.bin")
    >>> t = TempFile(path); _ = t.file.write(b"new"); t.commit()
    >>> open(path, "rb").read(), os.listdir(tmp.name)
    (b'new', ['a.bin'])
    >>> tmp.cleanup()
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        folder, name = os.path.split(os.path.abspath(self.path))
        clean_files(self.path)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
        while True:
            temp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.tmp")
            fd = os.open(temp, flags, 0o666)  # 0o666: the umask applies, as for open()
            if fcntl is None or (_try_lock(fd) and _same_inode(fd, temp)):
                break
            os.close(fd)  # a cleaner took it between its creation and our lock: take another name
        self.temp_path = temp
        self.file = os.fdopen(fd, "w+b")

    def commit(self) -> None:
        """Flush, fsync, rename over ``path``, fsync the folder; the lock is held until it is in place."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            if fcntl is None:  # Windows cannot rename an open file
                self.file.close()
            os.replace(self.temp_path, self.path)
        except BaseException:
            self.discard()
            raise
        self.file.close()
        self.temp_path = None
        fsync_folder(os.path.dirname(os.path.abspath(self.path)))

    def discard(self) -> None:
        """Close and delete the temporary file (errors closing it do not matter: it goes)."""
        with contextlib.suppress(OSError):
            self.file.close()
        if self.temp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temp_path)
            self.temp_path = None


def save_npz(path, arrays: dict) -> None:
    """``np.savez(path, **arrays)`` through a :class:`TempFile`: the old file or the new one,
    never a mix."""
    import numpy as np

    temp = TempFile(path)
    try:
        np.savez(temp.file, **arrays)
    except BaseException:
        temp.discard()
        raise
    temp.commit()


# ------------------------------------------------------------------------------------ folders


_RENAME_EXCHANGE = 2  # Linux renameat2 flag
_RENAME_SWAP = 2  # macOS renamex_np flag
_AT_FDCWD = -100
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "arm64": 276}
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", -1), getattr(errno, "EOPNOTSUPP", -1)}
_libc = None


def _exchange_function():
    """A ctypes callable ``f(a, b) -> int`` (0 or -1 with errno) that swaps two paths, or None."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if sys.platform.startswith("linux"):
        renameat2 = getattr(_libc, "renameat2", None)
        if renameat2 is not None:
            return lambda a, b: renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
        number = _SYS_RENAMEAT2.get(os.uname().machine)
        if number is None:
            return None
        return lambda a, b: _libc.syscall(number, _AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
    if sys.platform == "darwin":
        renamex_np = getattr(_libc, "renamex_np", None)
        return None if renamex_np is None else (lambda a, b: renamex_np(a, b, _RENAME_SWAP))
    return None


def exchange(a: str, b: str) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step; False where the system cannot."""
    swap = _exchange_function()
    if swap is None:
        return False
    if swap(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), a, None, b)


def _private_folder(path: str) -> tuple[str, int]:
    """(a new private folder ``.<name>.<hex>.wptmp`` beside ``path``, its locked descriptor)."""
    folder, name = os.path.split(path)
    while True:
        private = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.wptmp")
        os.mkdir(private)
        fd = os.open(private, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        if fcntl is None or (_try_lock(fd) and _same_inode(fd, private)):
            return private, fd
        os.close(fd)  # a cleaner took it between mkdir and our lock: take another name


def recover_folder(path) -> list:
    """Finish or undo what killed writers of the folder ``path`` left; return the leftovers handled.

    A private folder whose writer is gone is deleted, after moving its complete new package into
    place if the writer died between the journal's two renames (``path`` missing, ``COMMIT``
    written), or its old package back if the new one was not complete.
    """
    path = os.path.abspath(os.fspath(path))
    name = os.path.basename(path)
    handled = []
    for private in _leftovers(path, "wptmp", 12):
        with _if_abandoned(private, directory=True) as abandoned:
            if not abandoned:
                continue
            if not os.path.lexists(path):
                new, old = os.path.join(private, name), os.path.join(private, OLD)
                if os.path.exists(os.path.join(private, COMMIT)) and os.path.isdir(new):
                    os.rename(new, path)  # roll forward: the new package was complete
                elif os.path.isdir(old):
                    os.rename(old, path)  # roll back
                fsync_folder(os.path.dirname(path))
            shutil.rmtree(private, ignore_errors=True)
            handled.append(private)
    return handled


def replace_folder(path, write) -> None:
    """Make ``path`` the folder ``write(dest)`` creates at ``dest``, atomically (module docstring).

    ``write`` gets a path that does not exist yet, in a private folder beside ``path``; if it
    raises, nothing at ``path`` changes.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    recover_folder(path)
    private, fd = _private_folder(path)
    try:
        new = os.path.join(private, os.path.basename(path))
        write(new)
        fsync_tree(new)
        _swap_into_place(new, path, private)
        fsync_folder(folder)
        shutil.rmtree(private, ignore_errors=True)  # the old package, or nothing
    except BaseException:
        if not os.path.lexists(path) and os.path.isdir(os.path.join(private, OLD)):
            os.rename(os.path.join(private, OLD), path)  # journal: put the previous package back
        shutil.rmtree(private, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def _swap_into_place(new: str, path: str, private: str) -> None:
    for _ in range(8):  # another writer may create or remove ``path`` between the steps
        if os.path.lexists(path):
            if exchange(new, path):
                return
            _journal_swap(new, path, private)
            return
        try:
            os.rename(new, path)  # nothing there: one rename is atomic
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise OSError(errno.EBUSY, "the destination kept changing while it was being replaced", path)


def _journal_swap(new: str, path: str, private: str) -> None:
    """Two renames, recoverable by :func:`recover_folder` if the process dies between them."""
    with open(os.path.join(private, COMMIT), "wb") as journal:
        os.fsync(journal.fileno())
    fsync_folder(private)
    os.rename(path, os.path.join(private, OLD))
    os.rename(new, path)
