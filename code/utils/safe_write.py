"""Every file the project writes for a person goes through write_file: all of it, or none of it and one line.

The file is written under a temporary name beside its place, flushed to disk, checked (its size; a reader's check
where the writer may fail silently) and renamed over the old one. Any failure, a Ctrl-C aside, raises WriteError
naming the file, the reason (no space left, read-only, ...) and the fix; the previous file is intact and no
temporary file is left behind.

Libraries report a failed write in their own ways, so the reason is looked for in the exception, its chain
and, failing that, the folder: torch's zip writer replaces the OSError by "RuntimeError: [enforce fail ...]
unexpected pos" (the OSError is its __context__, and so is a KeyboardInterrupt that arrived inside it); ITK
names the reason in its text; SimpleITK's NIfTI writer reports nothing and leaves a short file, which only the
check finds. h5py files are built in memory and written here (dataloaders/layout.py): h5py's own writes to a
full disk fail at close, where the error is dropped, and then crash the interpreter.
"""
import contextlib
import errno
import io
import os
import tempfile

from utils.errors import WriteError, one_line

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
FULL_BELOW = 1 << 20  # bytes free: a folder with less is taken to be full when a writer did not say why it failed


class _Incomplete(Exception):
    """The writer returned, but the file on disk is not what it wrote."""


def write_file(path, write, check=None, size=None, where=None):
    """write(tmp) writes the whole file at tmp, a temporary neighbour of `path` whose name ends as path's does
    (writers pick the format by the ending). Then: flushed to disk; its size is `size` (or, without one, not 0);
    check(tmp), when given, returns True (a reader can read it back); renamed over `path`.
    where: the flag that chooses the folder (e.g. "--output"), named in the fix. Raises WriteError."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    existed, tmp = os.path.exists(path), None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + name, dir=directory)
        os.close(fd)
        write(tmp)
        _sync(tmp)
        written = os.path.getsize(tmp)
        if size is None and written == 0:
            raise _Incomplete("the file came out empty")
        if size is not None and written != size:
            raise _Incomplete(f"{written} of {size} bytes reached the disk")
        if check is not None and not _passes(check, tmp):
            raise _Incomplete("the written file does not read back whole")
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; the file is as readable as any other
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        interrupted = _interrupted(e)
        # the reason is looked for before the temporary file goes: it may be what fills the disk
        error = write_error(path, e, where, existed, directory) if isinstance(e, Exception) and not interrupted \
            else None
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if error is not None:
            raise error from None
        if interrupted and not isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt from None  # a Ctrl-C that a library turned into an error of its own
        raise
    try:  # the rename itself on disk; best effort (some file systems cannot sync a folder), the file is complete
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_bytes(path, data, where=None):
    """`data` (bytes or a buffer) -> path, through write_file."""
    data = memoryview(data).cast("B")

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    write_file(path, write, size=data.nbytes, where=where)


def write_text(path, write, where=None):
    """write(f) writes text into f (a file-like object; newlines as given) -> path (UTF-8), through write_file."""
    buf = io.StringIO(newline="")
    write(buf)
    write_bytes(path, buf.getvalue().encode("utf-8"), where)


def write_error(path, exc, where=None, existed=None, directory=None):
    """-> the WriteError for a failed write of `path`: the reason found in `exc`, its chain or the folder."""
    directory = directory or os.path.dirname(os.path.abspath(path))
    code, reason = _reason(exc, directory)
    other = f" or choose another {where}" if where else ""
    if code in NO_SPACE:
        fix = f"free disk space{other} and run again"
    elif code in NOT_WRITABLE:
        fix = f"make the folder writable{other}"
    else:
        fix = f"check the disk{other} and run again"
    kept = " (the previous file is intact)" if existed or (existed is None and os.path.exists(path)) else ""
    return WriteError(f"{path}: cannot be written ({reason}); {fix}{kept}")


def _reason(exc, directory):
    """-> (errno or None, the reason in words)."""
    chain = list(_chain(exc))
    os_error = next((x for x in chain if isinstance(x, OSError) and x.errno), None)
    if os_error is not None:
        return os_error.errno, os_error.strerror or os.strerror(os_error.errno)
    text = " ".join(str(x) for x in chain).lower()
    for code in NO_SPACE + NOT_WRITABLE:  # ITK says why in words only
        if os.strerror(code).lower() in text:
            return code, os.strerror(code)
    code = _folder_state(directory)  # nothing said why: what the folder's file system says now
    if code is not None:
        return code, os.strerror(code)
    return None, str(exc) if isinstance(exc, _Incomplete) else one_line(exc, with_type=True)


def _folder_state(directory):
    """errno.EROFS, EACCES or ENOSPC when the folder is read-only, not writable or (nearly) full, else None."""
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):  # gone, or not POSIX
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if not os.access(directory, os.W_OK):
        return errno.EACCES
    if st.f_bavail * st.f_frsize < FULL_BELOW:
        return errno.ENOSPC
    return None


def _chain(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _interrupted(exc):
    return any(isinstance(x, KeyboardInterrupt) for x in _chain(exc))


def _passes(check, tmp):
    try:
        return bool(check(tmp))
    except Exception:  # a reader's error on the written file: it is not whole
        return False


def _sync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # once: setting it to read it would race with threads that create files
