"""Extract a downloaded zip safely, once, into a cache folder.

A zip from the Hub is untrusted input. :func:`extract_zip_cached` refuses members with absolute
paths or ``..`` components, symbolic links whose target leaves the extraction folder, and stops
with :class:`UnsafeArchiveError` past a total-size or a compression-ratio limit (a zip bomb); the
byte count is enforced while writing, so a header that lies about sizes does not get through.
Extraction happens in a temporary sibling renamed into place (:func:`papo.files.write_dir_atomically`),
so an interrupted run never leaves a half-extracted folder that a later run would trust; a complete
folder is reused. The zip itself is only read.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from papo.files import write_dir_atomically

# Defaults sized for PAPO_eval's image zips (PNG/JPEG: ratios near 1, the largest split ~1 GB).
MAX_TOTAL_BYTES = 32 * 1024**3
MAX_RATIO = 200.0
_CHUNK = 1024 * 1024
_DONE_MARKER = ".papo-extracted"


class UnsafeArchiveError(ValueError):
    """A zip member that would write outside the folder, or an archive past the size/ratio limits."""


def default_cache_dir() -> Path:
    """``$PAPO_CACHE`` or ``$HF_HOME/papo``: where extracted archives live (never inside a snapshot)."""
    if os.environ.get("PAPO_CACHE"):
        return Path(os.environ["PAPO_CACHE"])
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "papo"


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path a member may be written to; raises for absolute paths and ``..``."""
    normalized = name.replace("\\", "/")
    path = PurePosixPath(normalized)
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise UnsafeArchiveError(f"zip member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"zip member {name!r} contains '..' (it would write outside the folder)")
    return path


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _link_stays_inside(member: PurePosixPath, target: str) -> bool:
    if target.startswith("/") or "\\" in target:
        return False
    depth = len(member.parent.parts)
    for part in PurePosixPath(target).parts:
        depth = depth - 1 if part == ".." else depth + (part != ".")
        if depth < 0:
            return False
    return True


def extract_zip(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_ratio: float = MAX_RATIO,
) -> Path:
    """Extract `zip_path` into the existing folder `dest`, member by member, checking each one.

    Raises :class:`UnsafeArchiveError` before writing anything when a member's path is unsafe or the
    declared sizes pass the limits, and while writing when the real bytes do.
    """
    dest = Path(dest)
    with zipfile.ZipFile(zip_path) as archive:
        infos = archive.infolist()
        declared = 0
        for info in infos:
            member = safe_member_path(info.filename)
            if _is_symlink(info):
                target = archive.read(info).decode("utf-8", "replace")
                if not _link_stays_inside(member, target):
                    raise UnsafeArchiveError(
                        f"zip member {info.filename!r} is a link to {target!r}, outside the extraction folder"
                    )
            declared += info.file_size
            if info.file_size > max_ratio * max(info.compress_size, 1) and info.file_size > _CHUNK:
                raise UnsafeArchiveError(
                    f"zip member {info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f}x "
                    f"(limit {max_ratio:.0f}x): refusing a possible zip bomb"
                )
        if declared > max_total_bytes:
            raise UnsafeArchiveError(
                f"{Path(zip_path).name} declares {declared} bytes uncompressed, over the limit of "
                f"{max_total_bytes}: refusing a possible zip bomb"
            )
        written = 0
        for info in infos:
            member = safe_member_path(info.filename)
            target = dest.joinpath(*member.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if _is_symlink(info):
                os.symlink(archive.read(info).decode("utf-8"), target)
                continue
            with archive.open(info) as source, open(target, "wb") as sink:
                member_bytes = 0
                while chunk := source.read(_CHUNK):
                    member_bytes += len(chunk)
                    written += len(chunk)
                    if written > max_total_bytes:
                        raise UnsafeArchiveError(
                            f"{Path(zip_path).name} expands past {max_total_bytes} bytes: refusing a possible "
                            "zip bomb"
                        )
                    if member_bytes > _CHUNK and member_bytes > max_ratio * max(info.compress_size, 1):
                        raise UnsafeArchiveError(
                            f"zip member {info.filename!r} expands past {max_ratio:.0f}x its compressed size: "
                            "refusing a possible zip bomb"
                        )
                    sink.write(chunk)
    return dest


def cache_key(zip_path: str | os.PathLike) -> str:
    """Name of a zip's extraction folder: its stem and a digest of its resolved path, size and mtime.

    In an HF cache the snapshot file is a link to a blob named by its hash, so a new revision of the
    zip gets a new folder.
    """
    real = Path(os.path.realpath(zip_path))
    st = real.stat()
    digest = hashlib.sha256(f"{real}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"{Path(zip_path).stem}-{digest}"


def extract_zip_cached(
    zip_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_ratio: float = MAX_RATIO,
) -> Path:
    """The folder `zip_path` is extracted into under ``cache_dir/extracted/``: extracted once, then reused."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / "extracted" / cache_key(zip_path)
    if (out / _DONE_MARKER).is_file():
        return out

    def write(tmp: Path) -> None:
        extract_zip(zip_path, tmp, max_total_bytes=max_total_bytes, max_ratio=max_ratio)
        (tmp / _DONE_MARKER).write_text(os.fspath(zip_path) + "\n")

    return write_dir_atomically(out, write)


def confined(root: str | os.PathLike, relative: str, what: str) -> Path:
    """``root / relative`` after checking that it stays inside `root` (links resolved); raises otherwise."""
    rel = relative.replace("\\", "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafeArchiveError(
            f"{what}: {relative!r} is an absolute path; only paths inside {root} are read"
        )
    if ".." in PurePosixPath(rel).parts:
        raise UnsafeArchiveError(f"{what}: {relative!r} contains '..'; only paths inside {root} are read")
    root_real = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root_real, candidate]) != root_real:
        raise UnsafeArchiveError(f"{what}: {relative!r} resolves outside {root}")
    return Path(candidate)


# Prefixes PAPO's data put before <folder>/<file> in image paths; the zips hold <folder>/<file>.
IMAGE_PREFIXES = ("data/images/", "images/", "data/")


def path_variants(image_path: str) -> list[str]:
    """A relative image path as written (``./`` dropped), then with PAPO's folder prefixes removed."""
    rel = image_path.replace("\\", "/")
    while rel.startswith("./"):
        rel = rel[2:]
    variants = [rel] + [rel[len(prefix) :] for prefix in IMAGE_PREFIXES if rel.startswith(prefix)]
    return list(dict.fromkeys(v for v in variants if v))


def find_image(roots: list[Path], image_path: str, where: str) -> Path | None:
    """The first existing ``root / variant`` of an untrusted relative `image_path`, confined to its root.

    Raises :class:`UnsafeArchiveError` for absolute paths, ``..`` and paths resolving outside a root;
    returns None when the image is under none of `roots`.
    """
    if not isinstance(image_path, str):
        raise ValueError(
            f"{where}, field 'images': expected relative path strings, got {type(image_path).__name__}"
        )
    variants = path_variants(image_path)
    for root in roots:
        for variant in variants or [image_path]:
            checked = confined(root, variant, where)  # raises before any lookup of an unsafe path
            if checked.is_file():
                return checked
    if not roots:
        confined(".", variants[0] if variants else image_path, where)
    return None
