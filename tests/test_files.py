"""papo.files: the one home of atomic writes (files and folders), with normal permissions."""

import os
import stat

import pytest

from papo.files import (
    write_bytes_atomically,
    write_dir_atomically,
    write_file_atomically,
    write_text_atomically,
)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_files_replace_atomically_with_plain_open_permissions(tmp_path):
    path = write_text_atomically(tmp_path / "sub" / "a.json", "{}")
    assert path.read_text() == "{}" and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    write_bytes_atomically(path, b"[1]")
    assert path.read_bytes() == b"[1]"
    with pytest.raises(RuntimeError):
        write_file_atomically(
            path, lambda tmp: (tmp.write_text("half"), (_ for _ in ()).throw(RuntimeError()))[0]
        )
    assert path.read_bytes() == b"[1]"  # the old content stays
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temp file left behind
    written = write_file_atomically(tmp_path / "b.parquet", lambda tmp: tmp.write_text(tmp.suffix))
    assert written.read_text() == ".parquet"  # the temp file keeps the suffix (writers that look at it)


def test_folders_get_normal_permissions_and_keep_the_old_on_failure(tmp_path):
    out = tmp_path / "model"
    write_dir_atomically(out, lambda tmp: (tmp / "v1").write_text("1"))
    assert (out / "v1").read_text() == "1"
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()  # not mkdtemp's private 0o700

    def broken(tmp):
        (tmp / "v2").write_text("2")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomically(out, broken)
    assert sorted(p.name for p in out.iterdir()) == ["v1"]
    write_dir_atomically(out, lambda tmp: (tmp / "v2").write_text("2"))  # a non-empty folder is replaced
    assert sorted(p.name for p in out.iterdir()) == ["v2"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # nothing aside or temporary left
