"""Native status codes: errors.py's STATUS_* are csrc/status.h's values, and
each becomes the exception class errors.py assigns it, at the one boundary
(_native.check_status) as in the writer (errors.error_for_status)."""

import errno

import pytest

from tfdump_fast import _native, errors

# Every StatusCode of csrc/status.h, with the exception it becomes and the
# errno that exception carries.
EXPECTED = {
    "STATUS_IO": (errors.TfdumpIOError, None),
    "STATUS_NO_SPACE": (errors.TfdumpIOError, errno.ENOSPC),
    "STATUS_PERMISSION": (errors.TfdumpIOError, errno.EACCES),
    "STATUS_CLOSED": (errors.TfdumpClosedError, None),
    "STATUS_BAD_ARGUMENT": (errors.TfdumpUsageError, None),
    "STATUS_DISK_BUDGET": (errors.TfdumpDiskBudgetError, None),
    "STATUS_CORRUPT": (errors.TfdumpCorruptionError, None),
    "STATUS_TRUNCATED": (errors.TfdumpTruncatedError, None),
    "STATUS_BAD_VERSION": (errors.TfdumpFormatError, None),
    "STATUS_INTERNAL": (errors.TfdumpError, None),
}


def _codes(module):
    return {name: value for name, value in vars(module).items() if name.startswith("STATUS_")}


def test_errors_status_codes_equal_status_h():
    native = _codes(_native)  # exported from csrc/status.h through status.pxd
    assert set(native) == set(EXPECTED) | {"STATUS_OK"}
    assert _codes(errors) == native
    assert native["STATUS_OK"] == 0 and len(set(native.values())) == len(native)


def test_ok_is_no_error():
    assert errors.error_for_status(errors.STATUS_OK, "fine") is None
    errors.raise_for_status(errors.STATUS_OK, "fine")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_status_becomes_its_exception_class(name):
    cls, err = EXPECTED[name]
    exc = errors.error_for_status(getattr(_native, name), "the message")
    assert type(exc) is cls
    assert isinstance(exc, errors.TfdumpError)
    assert "the message" in str(exc)
    if err is not None:
        assert exc.errno == err
    with pytest.raises(cls, match="the message"):
        errors.raise_for_status(getattr(_native, name), "the message")


def test_an_unknown_status_is_still_a_tfdump_error():
    assert type(errors.error_for_status(999, "odd")) is errors.TfdumpError


@pytest.mark.parametrize("err, name", [
    (errno.ENOSPC, "STATUS_NO_SPACE"), (errno.EDQUOT, "STATUS_NO_SPACE"),
    (errno.EACCES, "STATUS_PERMISSION"), (errno.EPERM, "STATUS_PERMISSION"),
    (errno.EROFS, "STATUS_PERMISSION"), (errno.EIO, "STATUS_IO"), (None, "STATUS_IO"),
])
def test_status_for_oserror(err, name):
    exc = OSError(err, "boom") if err is not None else OSError("boom")
    assert errors.status_for_oserror(exc) == getattr(errors, name)


def test_native_statuses_cross_the_boundary_as_their_classes():
    # kCorrupt from DecodeFrameHeader / DecodeFileHeader / ParseTable.
    with pytest.raises(errors.TfdumpCorruptionError, match="bad frame header"):
        _native.parse_frame_header(bytes(_native.FRAME_HEADER_SIZE))
    with pytest.raises(errors.TfdumpCorruptionError, match="not a tfdump-fast shard file"):
        _native.parse_file_header(bytes(_native.FILE_HEADER_SIZE))
    with pytest.raises(errors.TfdumpCorruptionError, match="corrupt record table"):
        _native.parse_table(b"\x09", 1)
    # Short input is reported as truncated, a bad argument as a usage error.
    with pytest.raises(errors.TfdumpTruncatedError, match="cut short"):
        _native.parse_frame_header(b"x")
    with pytest.raises(errors.TfdumpTruncatedError, match="shorter than a shard header"):
        _native.parse_file_header(b"x")
    with pytest.raises(errors.TfdumpUsageError, match="16 bytes"):
        _native.TableBuilder().blob(b"short", 0, 0, 0, 0)
