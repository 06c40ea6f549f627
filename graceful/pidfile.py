"""Pidfiles that are atomic, locked, stale-aware, and follow the live process across upgrades.

- A pidfile is written to a temp file in the same directory (``O_EXCL|O_NOFOLLOW``), locked with
  ``flock``, fsynced, then made to appear at the path in one step: a reader never sees an empty
  or half-written file.
- Its owner keeps the file open and locked for as long as it lives. "Stale" therefore means
  "its lock can be taken": a SIGKILLed owner loses the lock at once, and a recycled pid cannot
  make a dead owner look alive.
- ``handover`` lets a successor take the file while its predecessor still lives (a zero-downtime
  upgrade); the predecessor's ``release`` then leaves the successor's file alone. A successor
  ``stage``s its file first, so a full disk fails the upgrade before anything is taken over, and
  a predecessor whose successor died after the handover takes the file back with ``reclaim``.
- A write that fails (a full disk, a read-only directory) is a ``PidfileError`` naming the path,
  and leaves no temp file behind.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import secrets
from typing import Optional, Tuple, Union

from .errors import PidfileError

__all__ = ["Pidfile", "read_pid", "owner_pid"]

_TAKEOVER_ATTEMPTS = 20
_MAX_PIDFILE_BYTES = 64


class Pidfile:
    """A pidfile owned by this process while it holds the lock."""

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None
        self._staged: Optional[Tuple[int, str]] = None  # (locked fd, temp path) not yet in place

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Become the owner; ``PidfileError`` if a live process owns it (naming that pid)."""
        if self.held:
            return
        self._check_path_kind()
        fd, temp = self._write_locked_temp()
        try:
            self._install(fd, temp)
        except BaseException:
            os.close(fd)
            _unlink_quietly(temp)
            raise
        self._fd, self._pid = fd, os.getpid()

    def _install(self, fd: int, temp: str) -> None:
        for _ in range(_TAKEOVER_ATTEMPTS):
            try:
                os.link(temp, self.path)  # atomic "create if absent"
            except FileExistsError:
                if self._replace_if_stale(temp):
                    return
                continue
            except OSError as exc:
                raise self._error(f"cannot create it: {exc.strerror}") from None
            _unlink_quietly(temp)
            _fsync_directory(self.path)
            return
        raise self._error("it kept changing while we tried to take it over; is another "
                          "process fighting for it?")

    def _replace_if_stale(self, temp: str) -> bool:
        """Replace the existing file if nobody holds its lock; False if it vanished meanwhile."""
        try:
            old = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._error("it is a symbolic link; refusing to follow it (remove it)") from None
            raise self._error(f"cannot open it: {exc.strerror}") from None
        try:
            try:
                # Held until the replace is done, so of many contenders one alone replaces it.
                fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._held_by_live_process() from None
            if not _same_file(old, self.path):
                return False  # replaced under us: look again
            os.replace(temp, self.path)
            _fsync_directory(self.path)
            return True
        finally:
            os.close(old)

    def _held_by_live_process(self) -> PidfileError:
        try:
            pid: object = read_pid(self.path)
        except PidfileError:
            pid = None
        return self._error(f"it is held by running process {pid or '(unknown pid)'}; stop that "
                           f"process first (or choose another pidfile)")

    def stage(self) -> None:
        """Write our pid to a locked temp file beside the path, not yet in place.

        A successor stages before it reports ready: a full disk or an unwritable directory
        then fails the upgrade (the predecessor keeps the pidfile) instead of the handover."""
        if self.held or self._staged is not None:
            return
        self._check_path_kind()
        self._staged = self._write_locked_temp()

    def handover(self, predecessor_pid: int) -> None:
        """Take the pidfile from the live predecessor that started this process."""
        if self.held:
            return
        self._check_path_kind()
        try:
            current = read_pid(self.path)
        except PidfileError:
            current = None
        if current not in (None, predecessor_pid) and owner_pid(self.path) is not None:
            self._discard_staged()
            raise self._error(f"it names pid {current}, not our predecessor {predecessor_pid}; "
                              f"refusing to take it from an unrelated live process")
        self.stage()
        self._fd = self._put_staged_in_place()
        self._pid = os.getpid()

    def reclaim(self, successor_pid: int) -> bool:
        """Take the pidfile back from ``successor_pid``, which has exited; True if we had to.

        The successor may have put its own file in place (or removed it on exit) before it
        died or was rolled back: the path is made to name us again, and temp files the
        successor left behind are removed."""
        _remove_temp_files(self.path, successor_pid)
        if not self.held or _same_file(self._fd, self.path):  # type: ignore[arg-type]
            return False
        try:
            current = read_pid(self.path)
        except PidfileError:
            current = None
        if current not in (None, successor_pid) and owner_pid(self.path) is not None:
            raise self._error(f"it names pid {current}, neither us nor our successor "
                              f"{successor_pid}; leaving it to that live process")
        self._staged = self._write_locked_temp()
        old, self._fd = self._fd, self._put_staged_in_place()
        os.close(old)  # type: ignore[arg-type]
        return True

    def _put_staged_in_place(self) -> int:
        fd, temp = self._staged  # type: ignore[misc]
        self._staged = None
        try:
            os.replace(temp, self.path)
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(temp)
            raise self._error(f"cannot replace it: {exc.strerror}") from None
        _fsync_directory(self.path)
        return fd

    def _discard_staged(self) -> None:
        staged, self._staged = self._staged, None
        if staged is not None:
            os.close(staged[0])
            _unlink_quietly(staged[1])

    def release(self) -> None:
        """Remove the file if it is still ours (same inode, our pid); always drop the lock."""
        self._discard_staged()
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._pid == os.getpid() and _same_file(fd, self.path) \
                    and read_pid(self.path) == self._pid:
                os.unlink(self.path)
        except (OSError, PidfileError):
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "Pidfile":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # -- helpers -----------------------------------------------------------------------------

    def _check_path_kind(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(f"cannot inspect it: {exc.strerror}") from None
        import stat

        if stat.S_ISLNK(st.st_mode):
            raise self._error("it is a symbolic link; refusing to follow it (remove it)")
        if not stat.S_ISREG(st.st_mode):
            raise self._error("it exists and is not a regular file")

    def _write_locked_temp(self) -> "tuple[int, str]":
        directory = os.path.dirname(self.path)
        temp = _temp_path(self.path, os.getpid(), secrets.token_hex(4))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o644)
        except OSError as exc:
            raise self._error(f"cannot create a file in {directory}: {exc.strerror}"
                              f"{_fix_for(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # locked before anyone can see it
            data = f"{os.getpid()}\n".encode()
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)  # a full disk may only show here
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(temp)
            raise self._error(f"cannot write a file in {directory}: {exc.strerror}"
                              f"{_fix_for(exc)}") from None
        except BaseException:
            os.close(fd)
            _unlink_quietly(temp)
            raise
        return fd, temp

    def _error(self, why: str) -> PidfileError:
        return PidfileError(f"pidfile {self.path}: {why}")


def read_pid(path: Union[str, "os.PathLike[str]"]) -> Optional[int]:
    """The pid written in ``path``; None if there is no file. Garbage raises PidfileError."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidfileError(f"pidfile {path}: cannot read it: {exc.strerror}") from None
    try:
        data = os.read(fd, _MAX_PIDFILE_BYTES)
    finally:
        os.close(fd)
    pid = _parse(data)
    if pid is None:
        raise PidfileError(f"pidfile {path}: does not hold a pid (content {data[:32]!r})")
    return pid


def owner_pid(path: Union[str, "os.PathLike[str]"]) -> Optional[int]:
    """The pid of the live process that holds ``path``'s lock; None if missing or stale."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidfileError(f"pidfile {path}: cannot read it: {exc.strerror}") from None
    try:
        if _try_lock(fd):
            return None
        return _parse(os.read(fd, _MAX_PIDFILE_BYTES))
    finally:
        os.close(fd)


def _parse(data: bytes) -> Optional[int]:
    text = data.strip()
    if not text.isdigit() or len(text) > 10:
        return None
    pid = int(text)
    return pid if pid > 0 else None


def _try_lock(fd: int) -> bool:
    """Probe the lock: True (and released again) if nobody holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _fsync_directory(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_path(path: str, pid: Union[int, str], token: str) -> str:
    """The temp file a process writes before it puts its pidfile in place (named by its pid,
    so the predecessor can clean up after a successor that died mid-way)."""
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.{pid}.{token}.tmp")


def _remove_temp_files(path: str, pid: int) -> None:
    directory, base = os.path.split(path)
    pattern = os.path.join(glob.escape(directory), glob.escape(f".{base}.{pid}.") + "*.tmp")
    for temp in glob.glob(pattern):
        _unlink_quietly(temp)


def _fix_for(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return " (free some space there, or choose a pidfile on another file system)"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return " (choose a pidfile in a writable directory)"
    return ""


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
