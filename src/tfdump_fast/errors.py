"""The one error hierarchy of tfdump-fast.

Every error the package raises on purpose is a :class:`TfdumpError`. Each
subclass also inherits the built-in exception a caller would naturally catch
(``ValueError`` for bad arguments, ``OSError`` for file-system trouble), so
``except ValueError`` keeps working for code written against tfdbg.

Native code never raises: it returns a status code (``StatusCode`` in
``csrc/status.h``, ``STATUS_*`` here). ``tfdump_fast._native.check_status``
is the one place at the Cython boundary where such a code becomes an
exception, through :func:`raise_for_status`; Python code that holds a code
(the writer's workers, the engine's late drops) uses :func:`error_for_status`.
:func:`status_for_oserror` is the one mapping of an ``OSError`` to a code.
"""

from __future__ import annotations

import errno as _errno


class TfdumpError(Exception):
    """Base class of every error raised by tfdump-fast."""


class TfdumpUsageError(TfdumpError, ValueError):
    """A bad argument or option: the message names it and the fix."""


class TfdumpTypeError(TfdumpError, TypeError):
    """An argument of the wrong type where tfdbg raises ``TypeError`` (its message kept)."""


class TfdumpClosedError(TfdumpError, ValueError):
    """The writer or reader was used after ``close()``."""


class TfdumpIOError(TfdumpError, OSError):
    """Reading or writing a session root failed (disk full, permissions, ...)."""


class TfdumpDiskBudgetError(TfdumpIOError):
    """The configured disk budget was reached; later tensors were not written."""


class TfdumpFormatError(TfdumpError, ValueError):
    """A file is not a tfdump-fast dump, or is of an unsupported format version."""


class TfdumpCorruptionError(TfdumpFormatError):
    """A checksum mismatch or an inconsistent structure inside a dump file."""


class TfdumpTruncatedError(TfdumpFormatError):
    """A dump file ends inside a frame (the writer was killed mid-write)."""


class TfdumpNotFoundError(TfdumpError, KeyError):
    """A run, watch key or tensor that the dump does not contain."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TfdumpIndexError(TfdumpNotFoundError, IndexError):
    """A position past the end of a sequence of the dump (``run.records[i]``)."""


class TfdumpBridgeError(TfdumpError, ImportError):
    """The TensorFlow capture bridge could not be built or loaded."""


# The values of csrc/status.h's StatusCode (Python code that handles codes
# must not need the compiled extension); tests/test_status.py checks each
# against tfdump_fast._native.STATUS_*.
STATUS_OK = 0
STATUS_IO = 1
STATUS_NO_SPACE = 2
STATUS_PERMISSION = 3
STATUS_CLOSED = 4
STATUS_BAD_ARGUMENT = 5
STATUS_DISK_BUDGET = 6
STATUS_CORRUPT = 7
STATUS_TRUNCATED = 8
STATUS_BAD_VERSION = 9
STATUS_INTERNAL = 10

_STATUS_CLASSES = {
    STATUS_IO: TfdumpIOError,
    STATUS_NO_SPACE: TfdumpIOError,
    STATUS_PERMISSION: TfdumpIOError,
    STATUS_CLOSED: TfdumpClosedError,
    STATUS_BAD_ARGUMENT: TfdumpUsageError,
    STATUS_DISK_BUDGET: TfdumpDiskBudgetError,
    STATUS_CORRUPT: TfdumpCorruptionError,
    STATUS_TRUNCATED: TfdumpTruncatedError,
    STATUS_BAD_VERSION: TfdumpFormatError,
    STATUS_INTERNAL: TfdumpError,
}

_STATUS_ERRNO = {
    STATUS_NO_SPACE: _errno.ENOSPC,
    STATUS_PERMISSION: _errno.EACCES,
}


def error_for_status(code: int, message: str) -> TfdumpError | None:
    """Return the exception for a native status code, or None for success.

    Parameters
    ----------
    code : int
        A ``STATUS_*`` code.
    message : str
        The exception's message.

    Returns
    -------
    TfdumpError or None
        ``None`` for ``STATUS_OK``; ``STATUS_NO_SPACE`` and
        ``STATUS_PERMISSION`` give a :class:`TfdumpIOError` carrying
        ``ENOSPC`` / ``EACCES`` as its ``errno``; an unknown code a plain
        :class:`TfdumpError`.
    """
    if code == STATUS_OK:
        return None
    cls = _STATUS_CLASSES.get(code, TfdumpError)
    if issubclass(cls, OSError) and code in _STATUS_ERRNO:
        return cls(_STATUS_ERRNO[code], message)
    return cls(message)


def raise_for_status(code: int, message: str) -> None:
    """Raise the exception for a native status code; do nothing on success.

    Raises
    ------
    TfdumpError
        The subclass :func:`error_for_status` gives for ``code``.
    """
    exc = error_for_status(code, message)
    if exc is not None:
        raise exc


def status_for_oserror(exc: OSError) -> int:
    """The status code of a failed file-system call.

    Parameters
    ----------
    exc : OSError

    Returns
    -------
    int
        ``STATUS_NO_SPACE`` for a full disk or quota (``ENOSPC``,
        ``EDQUOT``), ``STATUS_PERMISSION`` for ``EACCES``, ``EPERM`` and
        ``EROFS``, else ``STATUS_IO``.
    """
    if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
        return STATUS_NO_SPACE
    if exc.errno in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
        return STATUS_PERMISSION
    return STATUS_IO
