"""Writes that never leave a half-written result behind: build beside the target, then rename.

The one home for atomic writes (files and folders). What is written gets the permissions a plain
``open(path, "w")`` / ``mkdir`` would give (0o666 / 0o777 minus the umask), not the private 0o600 / 0o700
of ``mkstemp`` / ``mkdtemp``, so a shared install stays readable by its other users.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_dir_atomically(out_dir: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` in a temporary sibling of `out_dir`, then move it into place.

    An existing `out_dir` (folder or file) is replaced only once `write` has succeeded: it is moved aside,
    the new one renamed in, and only then deleted (put back if the rename fails). If `write` fails, the
    temporary folder is removed and `out_dir` is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        write(tmp)
        if not out_dir.exists() and not out_dir.is_symlink():
            os.replace(tmp, out_dir)
            return out_dir
        # os.replace cannot overwrite a non-empty folder: move the old one aside first, then drop it.
        aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, aside / "old")
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(aside / "old", out_dir)  # put the previous one back before bailing out
            raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_file_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary sibling file of `path` (same suffix), then rename it over `path`.

    `write` gets a path to write to (e.g. ``dataset.to_parquet``, ``image.save``, ``fig.savefig``). On
    failure the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (`write_file_atomically`)."""
    return write_file_atomically(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically (`write_file_atomically`)."""
    return write_bytes_atomically(path, text.encode("utf-8"))
