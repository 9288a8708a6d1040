"""Files written atomically with the user's umask: a reader (or a crash) never sees half a file.

Every write goes to a temporary file in the target directory and is renamed into place. The
temporary file is created with mode 0o666 so the kernel applies the umask exactly as for any
file the user creates (never the 0600 of `tempfile.mkstemp`), and a shared results directory
stays readable by the people it is shared with.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(temp_path)` then rename the temporary file over `path`.

    The temporary file is created by `os.open(..., 0o666)`, so the kernel applies the umask
    exactly as it would for any file the user creates.
    """
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{path.parent} is not a directory", str(path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)
