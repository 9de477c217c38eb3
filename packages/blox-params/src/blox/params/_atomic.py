"""Writing one file atomically: readers see the old file or the complete new one.

`write_atomically(path, data)` writes `data` (bytes, or a callback that
writes to an open binary file) under a temporary name in the same folder,
flushes and fsyncs it, gives it the mode of the file it replaces (or, for a
new file, the mode any new file gets: 0o666 less the umask), renames it over
`path` with `os.replace` and fsyncs the folder. A process killed midway
(SIGKILL, power loss) can leave its temporary `.NAME.XXXXXXXXXXXX.tmp`
behind; the next successful write of the same path removes such leftovers
(so two processes must not write the same path at once). On any failure (an exception
from the callback, a full disk, Ctrl-C) the temporary file is removed and
`path` is left as it was. It knows nothing of what the bytes mean.

Example:
  >>> import os, tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), 'notes.txt')
  >>> write_atomically(path, b'first')
  >>> write_atomically(path, lambda file: file.write(b'second'))
  >>> open(path, 'rb').read(), os.listdir(os.path.dirname(path))
  (b'second', ['notes.txt'])
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Callable
from typing import IO, Any

__all__ = ["write_atomically"]

# A new file is created like any new file: this mode less the umask, which
# the operating system applies when the file is created.
_NEW_FILE_MODE = 0o666


def write_atomically(
    path: str | os.PathLike[str],
    data: bytes | Callable[[IO[bytes]], Any],
    what: str = "a file",
) -> None:
  """Replaces the file at `path` by `data`, atomically (see the module docstring).

  Args:
    path: the file to write; its folder must exist.
    data: the bytes, or `write(file)` that writes them to an open binary file.
    what: what is written, for error messages (`'checkpoint'`).

  Raises:
    FileNotFoundError: the folder of `path` does not exist (the message names
      it).
    OSError: the file could not be written or renamed.
  """
  target = os.path.abspath(os.fspath(path))
  directory, name = os.path.split(target)
  mode = _existing_mode(target)
  fd, temporary = _create_temporary(target, directory, name, what)
  try:
    with os.fdopen(fd, "wb") as file:
      if isinstance(data, bytes):
        file.write(data)
      else:
        data(file)
      file.flush()
      os.fsync(file.fileno())
    if mode is not None:
      os.chmod(temporary, mode)
    os.replace(temporary, target)
    _remove_leftovers(directory, name)
  except BaseException:
    # The temporary file is ours alone; remove it whatever went wrong (also
    # on KeyboardInterrupt), and leave `path` untouched.
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    raise
  _fsync_directory(directory)


def _remove_leftovers(directory: str, name: str) -> None:
  """Removes temporaries of `name` left by writes that were killed midway."""
  pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{12}}\.tmp")
  with contextlib.suppress(OSError):
    for entry in os.listdir(directory):
      if pattern.fullmatch(entry):
        with contextlib.suppress(OSError):
          os.unlink(os.path.join(directory, entry))


def _existing_mode(target: str) -> int | None:
  """The permissions of the file to replace, or None if there is none."""
  try:
    return stat.S_IMODE(os.stat(target).st_mode)
  except OSError:
    return None


def _create_temporary(target: str, directory: str, name: str, what: str) -> tuple[int, str]:
  """Opens a new, uniquely named file next to `target` for writing.

  Unlike `tempfile.mkstemp` (always 0o600), the file gets the mode a new file
  gets from the process's umask: the kernel applies the umask at creation,
  so it never has to be read (reading it means changing it, which races with
  other threads).
  """
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
  for _ in range(100):
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    try:
      return os.open(temporary, flags, _NEW_FILE_MODE), temporary
    except FileExistsError:
      continue
    except FileNotFoundError:
      if os.path.isdir(directory):
        raise
      raise FileNotFoundError(
          f"Cannot save {what} to {target!r}: the folder {directory!r} does not"
          " exist; create it first (os.makedirs)."
      ) from None
  raise FileExistsError(f"Could not create a temporary file for {name!r} in {directory!r}.")


def _fsync_directory(directory: str) -> None:
  """Makes the rename durable. Best effort: some systems cannot open or sync
  a directory, and the new file is already in place by then."""
  with contextlib.suppress(OSError):
    fd = os.open(directory, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
