"""Pidfiles that are atomic, locked, stale-aware, and follow the live process across upgrades.

- A pidfile is written to a temp file in the same directory (``O_EXCL|O_NOFOLLOW``), locked with
  ``flock``, fsynced, then made to appear at the path in one step: a reader never sees an empty
  or half-written file.
- Its owner keeps the file open and locked for as long as it lives. "Stale" therefore means
  "its lock can be taken": a SIGKILLed owner loses the lock at once, and a recycled pid cannot
  make a dead owner look alive.
- ``handover`` lets a successor take the file while its predecessor still lives (a zero-downtime
  upgrade); the predecessor's ``release`` then leaves the successor's file alone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from typing import Optional, Union

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
            raise self._error(f"it names pid {current}, not our predecessor {predecessor_pid}; "
                              f"refusing to take it from an unrelated live process")
        fd, temp = self._write_locked_temp()
        try:
            os.replace(temp, self.path)
            _fsync_directory(self.path)
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(temp)
            raise self._error(f"cannot replace it: {exc.strerror}") from None
        self._fd, self._pid = fd, os.getpid()

    def release(self) -> None:
        """Remove the file if it is still ours (same inode, our pid); always drop the lock."""
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
        directory, base = os.path.split(self.path)
        temp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o644)
        except OSError as exc:
            raise self._error(f"cannot create a file in {directory}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # locked before anyone can see it
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
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


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
