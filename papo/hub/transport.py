"""Pushing a built folder to the Hub in one commit: the transport every ``papo push`` uses.

``_build_then_push`` builds a repo folder (in the dry-run folder, or a temporary one that is then pushed);
``_push_folder`` mirrors it into the repo in **one commit**: every file is added, and every remote file that
is not in the folder is deleted (only ``.gitattributes`` is kept). Transient failures (HTTP 408/429/5xx,
connection errors) are retried with exponential backoff (``_with_retries``); HTTP 401/403 becomes a
``HubAuthError`` whose message says how to log in. The token is taken from the ``token`` argument, else from
huggingface_hub itself (``HF_TOKEN``, or ``hf auth login``); it is never printed, logged or written into a
file, and a push refuses to upload a folder that contains it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from papo.files import write_dir_atomically
from papo.hub.checks import _REDACTED

logger = logging.getLogger(__name__)


# Remote files a mirroring push never deletes (the Hub creates .gitattributes with the repo: LFS rules).
KEEP_REMOTE = frozenset({".gitattributes"})


TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


AUTH_STATUS = frozenset({401, 403})


class HubPushError(RuntimeError):
    """A push to the Hub failed (after retries for transient errors)."""


class HubAuthError(HubPushError):
    """The Hub refused the credentials (HTTP 401/403)."""


def _build_then_push(build, repo_id: str, repo_type: str, dry_run_dir, **push_kwargs) -> str:
    """`build(out_dir, overwrite=...)` the repo folder; with `dry_run_dir` stop there (no network),
    else build it in a temporary folder and push it in one commit. Returns the dry-run dir or the URL."""
    _check_repo_id(repo_id)
    if dry_run_dir is not None:
        return str(build(dry_run_dir, overwrite=_is_previous_build(dry_run_dir)))
    with tempfile.TemporaryDirectory(prefix="papo-push-") as tmp:
        return _push_folder(build(Path(tmp) / "repo"), repo_id, repo_type, **push_kwargs)


def _push_folder(
    folder: Path,
    repo_id: str,
    repo_type: str,
    *,
    private: bool,
    token: str | None,
    commit_message: str,
    retries: int = 3,
    retry_base_delay: float = 2.0,
    create_kwargs: dict | None = None,
) -> str:
    """Mirror ``folder`` into the repo in one commit, with retries; returns the commit URL.

    ``create_kwargs``: extra arguments of ``HfApi.create_repo`` (a Space's ``space_sdk``)."""
    local_files = _list_files(folder)
    _refuse_if_contains(folder, local_files, token or _stored_token())
    push = partial(
        _push_once, folder, local_files, repo_id, repo_type, private, token, commit_message, create_kwargs
    )
    return _with_retries(push, repo_id, token=token, retries=retries, retry_base_delay=retry_base_delay)


def _stored_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _with_retries(
    call: Callable[[], Any],
    repo_id: str,
    *,
    token: str | None,
    retries: int = 3,
    retry_base_delay: float = 2.0,
    what: str = "push to",
) -> Any:
    """``call()`` with retries of transient failures; HTTP 401/403 -> ``HubAuthError`` saying how to log in,
    offline mode -> ``HubPushError``; the token never appears in a message."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    resolved_token = token or _stored_token()
    tries = max(1, int(retries))
    for attempt in range(1, tries + 1):
        try:
            return call()
        except OfflineModeIsEnabled:
            raise HubPushError(
                f"cannot push {repo_id}: offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set); "
                "unset it and retry"
            ) from None
        except Exception as exc:
            status = _status_code(exc)
            if status in AUTH_STATUS:
                missing = "" if resolved_token else " (no Hugging Face token was found)"
                raise HubAuthError(
                    f"authentication failed for {repo_id} (HTTP {status}){missing}: log in with "
                    "`hf auth login` or set HF_TOKEN; the token needs write access"
                ) from None
            if not _is_transient(exc, status):
                raise
            message = _redact(f"{type(exc).__name__}: {exc}".splitlines()[0], resolved_token)
            if attempt == tries:
                raise HubPushError(f"{what} {repo_id} failed after {tries} tries: {message}") from None
            delay = retry_base_delay * 2 ** (attempt - 1)
            logger.warning(
                "%s %s: try %d/%d failed (%s); retrying in %.3g s",
                what,
                repo_id,
                attempt,
                tries,
                message,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _push_once(
    folder: Path,
    local_files: list[str],
    repo_id: str,
    repo_type: str,
    private: bool,
    token: str | None,
    commit_message: str,
    create_kwargs: dict | None = None,
) -> str:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **(create_kwargs or {}))
    if private:
        info = api.repo_info(repo_id, repo_type=repo_type)
        if info.private is False:
            logger.warning(
                "%s already exists and is public: `private` only applies when a repo is created", repo_id
            )
    try:
        remote = set(api.list_repo_files(repo_id, repo_type=repo_type))
    except (EntryNotFoundError, RevisionNotFoundError):  # an empty repo (no commit on main yet)
        remote = set()
    operations: list = [
        CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in local_files
    ]
    stale = sorted(remote - set(local_files) - KEEP_REMOTE)
    operations += [CommitOperationDelete(path_in_repo=p) for p in stale]
    if stale:
        logger.info("deleting %d remote file(s) no longer in the folder: %s", len(stale), ", ".join(stale))
    info = api.create_commit(repo_id, operations, commit_message=commit_message, repo_type=repo_type)
    return info.commit_url


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _is_transient(exc: BaseException, status: int | None) -> bool:
    if status is not None:
        return status in TRANSIENT_STATUS
    transport: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    for module in ("httpx2", "httpx", "requests"):
        mod = sys.modules.get(module)
        for name in ("TransportError", "ConnectionError", "Timeout"):
            cls = getattr(getattr(mod, "exceptions", mod), name, None) if mod else None
            if isinstance(cls, type) and issubclass(cls, BaseException):
                transport += (cls,)
    return isinstance(exc, transport)


def _list_files(folder: Path) -> list[str]:
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise HubPushError(f"{path} is a symbolic link; the folder to push must hold plain files")
        if path.is_file():
            files.append(path.relative_to(folder).as_posix())
    if not files:
        raise HubPushError(f"{folder} is empty: nothing to push")
    return files


def _refuse_if_contains(folder: Path, files: Iterable[str], secret: str | None) -> None:
    """Refuse to upload a folder in which the token appears (read in chunks; the overlap catches splits)."""
    if not secret:
        return
    needle = secret.encode()
    for rel in files:
        with open(folder / rel, "rb") as f:
            tail = b""
            while chunk := f.read(8 << 20):
                if needle in tail + chunk:
                    raise HubPushError(f"refusing to push: {rel} contains your Hugging Face token")
                tail = chunk[-len(needle) :]


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, _REDACTED) if secret else text


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"invalid repo id {repo_id!r}: expected <namespace>/<name> ({exc})") from None


def _build_atomically(out_dir: Path, write: Callable[[Path], None], *, overwrite: bool, source: Path) -> Path:
    """Run ``write(tmp)`` in a sibling temporary directory, then move it to ``out_dir``."""
    out_dir = out_dir.expanduser()
    if out_dir.resolve() == source.resolve() or source.resolve() in out_dir.resolve().parents:
        raise ValueError(f"out_dir {str(out_dir)!r} must not be {source} or inside it")
    if out_dir.resolve() in source.resolve().parents:
        raise ValueError(f"out_dir {str(out_dir)!r} must not contain {source}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; choose an empty directory")
    return write_dir_atomically(out_dir, write)


def _is_previous_build(path: str | os.PathLike) -> bool:
    """Whether a dry run may replace ``path``: a folder an earlier build wrote (a card tagged papo, no .git)."""
    path = Path(path).expanduser()
    readme = path / "README.md"
    if not path.is_dir() or (path / ".git").exists() or not readme.is_file():
        return False
    match = re.match(r"^---\n(.*?)\n---\n", readme.read_text(encoding="utf-8", errors="replace"), re.DOTALL)
    try:
        metadata = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return False
    return isinstance(metadata, dict) and "papo" in (metadata.get("tags") or [])
