"""A small in-memory stand-in for the Hugging Face Hub HTTP API, on loopback, for upload tests.

It implements only what ``huggingface_hub`` 2.x calls to create a repo and make one commit of regular
(non-LFS) files, with the routes and JSON replies of ``hf_api.py`` / ``_commit_api.py``:

- ``POST /api/repos/create``                       -> ``{"url": ...}``, 409 if it exists
- ``GET  /api/{type}s/{ns}/{name}[/revision/{rev}]`` -> repo info (``id``, ``sha``, ``private``)
- ``GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]`` -> files and folders (``recursive``)
- ``POST /api/validate-yaml``                     -> parses the README front matter (400 if invalid)
- ``POST /api/{type}s/{ns}/{name}/preupload/{rev}`` -> ``uploadMode: regular`` for every file, with the git
  blob oid of the file already stored at that path (so unchanged files are skipped by the client)
- ``POST /api/{type}s/{ns}/{name}/commit/{rev}``   -> applies the NDJSON header / file (base64) /
  deletedFile lines, returns ``{"commitUrl", "commitOid"}``
- ``GET  /api/whoami-v2``, and ``GET /api/agent-harnesses`` (the client's telemetry registry: empty)
- ``HEAD|GET /[{type}s/]{ns}/{name}/resolve/{rev}/{path}`` -> a file (``hf_hub_download``): ``X-Repo-Commit``,
  ``ETag`` = its git blob oid, ``Content-Length``; 404 with ``X-Error-Code`` RepoNotFound / EntryNotFound
- Spaces (``HfApi.get_space_variables`` / ``add_space_variable`` / ``delete_space_variable`` /
  ``request_space_hardware`` / ``get_space_runtime``): ``GET|POST|DELETE /api/spaces/{ns}/{name}/variables``
  -> ``{key: {"value", "description"?, "updatedAt"}}``, ``POST /api/spaces/{ns}/{name}/hardware`` and
  ``GET /api/spaces/{ns}/{name}/runtime`` -> ``{"stage", "hardware": {"current", "requested"}}``

Every request needs ``Authorization: Bearer <token>`` (else 401 "Invalid credentials"), and
``fail_next(route, n, status)`` makes the next ``n`` requests of a route fail (503 by default) to test
retries. Repos are kept in memory: ``hub.repo(repo_id, "dataset").files`` maps paths to bytes and
``.commits`` lists every commit with its additions and deletions; a Space's ``.variables`` maps keys to values
and ``.hardware`` is the requested hardware (``.sdk``: the SDK it was created with).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

MAX_BODY = 256 << 20  # bounded: a request body above 256 MiB is refused
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    summary: str
    added: dict[str, bytes]
    deleted: list[str]


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    sdk: str | None = None  # Spaces only, as for the fields below
    variables: dict[str, str] = field(default_factory=dict)
    hardware: str | None = None

    @property
    def head(self) -> str:
        return self.commits[-1].oid


class FakeHub:
    """The server state; ``start()`` / ``stop()`` run it on 127.0.0.1 on a free port."""

    def __init__(self, token: str, user: str = "papo-tester"):
        self.token = token
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._failures: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- test controls ---------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail_next(self, route: str, times: int = 1, status: int = 503) -> None:
        """Answer the next ``times`` requests of ``route`` (create, info, tree, preupload, commit,
        validate-yaml, whoami, resolve, variables, hardware, runtime) with ``status``."""
        with self._lock:
            self._failures.setdefault(route, []).extend([status] * times)

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def routes_called(self) -> list[str]:
        return [f"{method} {path}" for method, path, _ in self.requests]

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.timeout = 5
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # --- internals ------------------------------------------------------------------------------------
    def _take_failure(self, route: str) -> int | None:
        with self._lock:
            queue = self._failures.get(route)
            return queue.pop(0) if queue else None

    def _url(self, repo: Repo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.endpoint}/{prefix}{repo.repo_id}"

    def _commit(self, repo: Repo, summary: str, added: dict[str, bytes], deleted: list[str]) -> Commit:
        for path in deleted:
            repo.files.pop(path)
        repo.files.update(added)
        parent = repo.commits[-1].oid if repo.commits else ""
        digest = hashlib.sha1(parent.encode() + summary.encode())
        for path in sorted(repo.files):
            digest.update(path.encode() + b"\0" + git_blob_oid(repo.files[path]).encode())
        commit = Commit(oid=digest.hexdigest(), summary=summary, added=added, deleted=deleted)
        repo.commits.append(commit)
        return commit


_RESOLVE_ROUTE = re.compile(
    r"^/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)
_SPACE_ROUTE = re.compile(r"^/api/spaces/(?P<repo>[^/]+/[^/]+)/(?P<action>variables|hardware|runtime)$")
_REPO_ROUTE = re.compile(
    r"^/api/(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
    r"(?:/(?P<action>tree|preupload|commit|revision)/(?P<rev>[^/]+)(?P<rest>/.*)?)?$"
)


class _Handler(BaseHTTPRequestHandler):
    state: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep the test output clean
        pass

    # --- plumbing -----------------------------------------------------------------------------------------
    def _reply(
        self, status: int, payload=None, headers: dict[str, str] | None = None, raw: bytes | None = None
    ):
        body = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        content_type = "application/octet-stream" if raw is not None else "application/json"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.state.requests.append((self.command, urlsplit(self.path).path, status))

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._reply(status, {"error": message}, headers)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length else b""

    def _authorised(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.state.token}"

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            body = self._body() if method in ("POST", "DELETE") else b""
        except ValueError as exc:
            self.close_connection = True
            return self._error(413, str(exc))
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if method == "GET" and path == "/api/agent-harnesses":  # public telemetry registry, no auth
            return self._reply(200, {"standardEnvVars": [], "harnesses": {}})
        route, handler, args = self._route(method, path)
        if handler is None:
            return self._error(404, f"no fake route for {method} {path}")
        if not self._authorised():
            return self._error(401, "Invalid credentials in Authorization header")
        failure = self.state._take_failure(route)
        if failure is not None:
            return self._error(failure, f"injected failure ({failure}) on {route}")
        try:
            with self.state._lock:
                handler(body=body, query=query, **args)
        except Exception as exc:  # a bug in the fake or a malformed request: say so instead of hanging
            self._error(500, f"fake hub error: {type(exc).__name__}: {exc}")

    def _route(self, method: str, path: str):
        if method == "POST" and path == "/api/repos/create":
            return "create", self._create, {}
        if method == "POST" and path == "/api/validate-yaml":
            return "validate-yaml", self._validate_yaml, {}
        if method == "GET" and path == "/api/whoami-v2":
            return "whoami", self._whoami, {}
        match = _RESOLVE_ROUTE.match(path)
        if match and method in ("GET", "HEAD"):
            args = {"repo_type": REPO_TYPES.get(match["kind"] or "", "model"), "repo_id": match["repo"]}
            return "resolve", self._resolve, {**args, "rev": match["rev"], "path": match["path"]}
        match = _SPACE_ROUTE.match(path)
        if match:
            action, args = match["action"], {"repo_id": match["repo"]}
            if action == "variables" and method in ("GET", "POST", "DELETE"):
                return "variables", self._variables, {**args, "method": method}
            if (action, method) in (("hardware", "POST"), ("runtime", "GET")):
                return action, getattr(self, f"_{action}"), args
            return None, None, {}
        match = _REPO_ROUTE.match(path)
        if not match:
            return None, None, {}
        args = {"repo_type": REPO_TYPES[match["kind"]], "repo_id": match["repo"]}
        action = match["action"]
        if method == "GET" and action in (None, "revision"):
            return "info", self._info, args
        if method == "GET" and action == "tree":
            return "tree", self._tree, {**args, "sub": (match["rest"] or "").strip("/")}
        if method == "POST" and action in ("preupload", "commit") and not match["rest"]:
            return action, getattr(self, f"_{action}"), args
        return None, None, {}

    def _get_repo(self, repo_type: str, repo_id: str) -> Repo | None:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound")
        return repo

    # --- endpoints --------------------------------------------------------------------------------------
    def _create(self, body: bytes, query, **_):
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or self.state.user
        repo_id = f"{namespace}/{payload['name']}"
        key = (repo_type, repo_id)
        if key in self.state.repos:  # the real Hub also sends the url: create_repo(exist_ok=True) reads it
            message = f"You already created this {repo_type} repo"
            url = self.state._url(self.state.repos[key])
            return self._reply(409, {"error": message, "url": url}, {"X-Error-Message": message})
        if repo_type == "space" and payload.get("sdk") not in ("gradio", "streamlit", "docker", "static"):
            return self._error(400, "a Space needs an sdk: gradio, streamlit, docker or static")
        repo = Repo(repo_id, repo_type, private=payload.get("visibility") == "private")
        if repo_type == "space":
            repo.sdk, repo.hardware = payload["sdk"], payload.get("hardware")
            repo.variables = {v["key"]: v["value"] for v in payload.get("variables") or []}
        self.state.repos[key] = repo
        self.state._commit(repo, "initial commit", {".gitattributes": GITATTRIBUTES}, [])
        self._reply(200, {"url": self.state._url(repo), "name": repo_id, "id": repo.head})

    def _whoami(self, body, query, **_):
        self._reply(200, {"type": "user", "name": self.state.user, "auth": {"type": "access_token"}})

    def _validate_yaml(self, body: bytes, query, **_):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            return self._reply(400, {"errors": [{"message": f"invalid YAML: {exc}"}]})
        if not isinstance(metadata, dict):
            return self._reply(400, {"errors": [{"message": "metadata must be a mapping"}]})
        self._reply(200, {"errors": [], "warnings": []})

    def _info(self, body, query, repo_type: str, repo_id: str):
        repo = self._get_repo(repo_type, repo_id)
        if repo is not None:
            siblings = [{"rfilename": p} for p in sorted(repo.files)]
            self._reply(200, {"id": repo_id, "sha": repo.head, "private": repo.private, "siblings": siblings})

    def _tree(self, body, query, repo_type: str, repo_id: str, sub: str):
        repo = self._get_repo(repo_type, repo_id)
        if repo is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{sub}/" if sub else ""
        entries, folders = [], set()
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(
                        {"type": "directory", "path": folder, "oid": git_blob_oid(folder.encode())}
                    )
            if recursive or len(parts) == 1:
                data = repo.files[path]
                entries.append({"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)})
        self._reply(200, entries)

    def _preupload(self, body: bytes, query, repo_type: str, repo_id: str):
        repo = self._get_repo(repo_type, repo_id)
        if repo is None:
            return
        files = []
        for item in json.loads(body)["files"]:
            existing = repo.files.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing) if existing is not None else None,
                }
            )
        self._reply(200, {"files": files, "commitOid": repo.head})

    def _commit(self, body: bytes, query, repo_type: str, repo_id: str):
        repo = self._get_repo(repo_type, repo_id)
        if repo is None:
            return
        if self.headers.get("Content-Type") != "application/x-ndjson":
            return self._error(400, "expected application/x-ndjson")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "the first line must be the header")
        summary = lines[0]["value"]["summary"]
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return self._error(400, "only base64 file content is supported")
                added[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in repo.files:
                    return self._error(404, "A file with this name doesn't exist", "EntryNotFound")
                deleted.append(value["path"])
            else:
                return self._error(400, f"the fake hub does not support {key!r} operations")
        commit = self.state._commit(repo, summary, added, deleted)
        self._reply(
            200,
            {
                "commitUrl": f"{self.state._url(repo)}/commit/{commit.oid}",
                "commitOid": commit.oid,
                "pullRequestUrl": None,
            },
        )

    def _resolve(self, body, query, repo_type: str, repo_id: str, rev: str, path: str):
        repo = self._get_repo(repo_type, repo_id)
        if repo is None:
            return
        if rev not in ("main", repo.head):
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        data = repo.files.get(path)
        if data is None:
            return self._error(404, f"{path} does not exist on {rev}", "EntryNotFound")
        headers = {"X-Repo-Commit": repo.head, "ETag": f'"{git_blob_oid(data)}"'}
        self._reply(200, headers=headers, raw=data)

    def _space(self, repo_id: str) -> Repo | None:
        return self._get_repo("space", repo_id)

    def _variables(self, body: bytes, query, repo_id: str, method: str):
        repo = self._space(repo_id)
        if repo is None:
            return
        if method == "POST":
            payload = json.loads(body)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(payload.get("key", ""))):
                return self._error(400, f"invalid variable name {payload.get('key')!r}")
            repo.variables[payload["key"]] = str(payload.get("value", ""))
        elif method == "DELETE":
            repo.variables.pop(json.loads(body)["key"], None)
        updated = "2026-01-01T00:00:00.000Z"
        self._reply(200, {k: {"value": v, "updatedAt": updated} for k, v in sorted(repo.variables.items())})

    def _runtime_payload(self, repo: Repo) -> dict:
        current = repo.hardware or "cpu-basic"
        return {"stage": "BUILDING", "hardware": {"current": current, "requested": repo.hardware}}

    def _hardware(self, body: bytes, query, repo_id: str):
        repo = self._space(repo_id)
        if repo is None:
            return
        flavor = json.loads(body).get("flavor")
        if not flavor:
            return self._error(400, "flavor is required")
        repo.hardware = flavor
        self._reply(200, self._runtime_payload(repo))

    def _runtime(self, body, query, repo_id: str):
        repo = self._space(repo_id)
        if repo is not None:
            self._reply(200, self._runtime_payload(repo))
