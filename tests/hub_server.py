"""A loopback stand-in for the Hugging Face Hub's HTTP endpoints, serving local checkpoint folders.

The real `huggingface_hub` client talks to it through `HF_ENDPOINT`, so a survey goes down the
same code path as against the Hub (revision resolution, tree listing, per-file metadata, the HF_HOME
cache layout) with no network. What it answers, as the Hub does (huggingface_hub 1.x and later):

- `GET /api/models` (discovery): every repo served, with its sha and downloads; the queries seen are kept;
- `GET /api/models/{repo}[/revision/{rev}]` (`model_info`, `snapshot_download`): id, sha, siblings;
- `GET /api/models/{repo}/auth-check` (`auth_check`): 200, or a gated repo's 401 `GatedRepo`;
- `GET /api/models/{repo}/tree/{rev}[/{folder}][?recursive=true]` (`list_repo_tree`): the folder's
  files (each one's size, git blob id, and for weight files the LFS object: sha256, size) and
  subfolders, or every file below it;
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: `X-Repo-Commit`, `ETag` (git blob id) or for LFS files
  `X-Linked-Etag` (the sha256, which names the cache blob) and `X-Linked-Size`, `Content-Length`,
  `Range` (huggingface_hub resumes with it); unknown repos, revisions and files answer 404 with the
  Hub's `X-Error-Code`, a gated repo's files 401 `GatedRepo`;
- the same for dataset repos under `/api/datasets/...` and `/datasets/{repo}/resolve/...`, as the
  `datasets` library reads them (`load_dataset`: README configs, tree listing, parquet files).

Every file body goes through one `Pacer` shared by all connections: the rate of the link between
the Hub and the node (e.g. 200 MB/s), so that downloads take the time they would.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")  # stored in LFS on the Hub (its .gitattributes)
CHUNK = 1 << 20
RESOLVE = re.compile(r"^/(?P<type>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
API = re.compile(r"^/api/(?P<type>models|datasets)/(?P<repo>[^/]+/[^/]+)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+))?(?:/(?P<path>.*))?$")


@dataclass(frozen=True)
class File:
    path: Path
    size: int
    blob_id: str  # git's blob sha1, the Hub's `oid`
    sha256: str | None  # LFS files only

    @classmethod
    def of(cls, path: Path) -> File:
        data = path.read_bytes()
        lfs = path.name.endswith(LFS_SUFFIXES)
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return cls(path, len(data), blob, hashlib.sha256(data).hexdigest() if lfs else None)


@dataclass
class Repo:
    sha: str
    files: dict[str, File]
    downloads: int = 0
    gated: bool = False  # its files answer 401 GatedRepo, as the Hub's do to a user who has not been granted access


@dataclass
class Transfer:
    """One file body sent: what, when (time.time()), how many bytes."""

    repo: str
    file: str
    started: float
    finished: float
    bytes: int


class Pacer:
    """A fixed rate for all connections together: each chunk books the link's next free slot."""

    def __init__(self, bytes_per_second: float | None) -> None:
        self.rate, self.free_at, self.lock = bytes_per_second, 0.0, threading.Lock()

    def book(self, n: int) -> None:
        """Wait until the link has carried `n` more bytes at the rate (then write them)."""
        if not self.rate:
            return
        with self.lock:
            self.free_at = max(time.monotonic(), self.free_at) + n / self.rate
            until = self.free_at
        time.sleep(max(0.0, until - time.monotonic()))


@dataclass
class HubServer:
    """`with HubServer(rate) as hub: hub.add("org/name", folder)`; `hub.url` goes into HF_ENDPOINT."""

    rate: float | None = None  # bytes per second for file bodies, all connections together; None: unlimited
    repos: dict[str, Repo] = field(default_factory=dict)  # model repos
    datasets: dict[str, Repo] = field(default_factory=dict)  # dataset repos (`/api/datasets`, `/datasets/.../resolve`)
    queries: list[dict[str, list[str]]] = field(default_factory=list)  # of GET /api/models, in order
    transfers: list[Transfer] = field(default_factory=list)
    url: str = ""

    def add(self, repo_id: str, folder: Path, sha: str | None = None, downloads: int = 0, dataset: bool = False,
            gated: bool = False) -> str:
        """Serve `folder`'s files as model (or `dataset`) repo `repo_id` at commit `sha` (default: one
        derived from the name) on `main`; `gated`: listed, but its files refused."""
        sha = sha or hashlib.sha1(repo_id.encode()).hexdigest()
        files = {p.relative_to(folder).as_posix(): File.of(p) for p in sorted(folder.rglob("*")) if p.is_file()}
        (self.datasets if dataset else self.repos)[repo_id] = Repo(sha, files, downloads, gated)
        return sha

    def bytes_served(self) -> int:
        return sum(t.bytes for t in self.transfers)

    def __enter__(self) -> HubServer:
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self.pacer = Pacer(self.rate)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    def lookup(self, repo_id: str, revision: str, dataset: bool = False) -> Repo | str:
        """The repo at `revision` (main or its sha), or the Hub's error code."""
        repo = (self.datasets if dataset else self.repos).get(repo_id)
        if repo is None:
            return "RepoNotFound"
        return repo if urllib.parse.unquote(revision) in ("main", repo.sha) else "RevisionNotFound"


def _handler(hub: HubServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            url = urllib.parse.urlparse(self.path)
            path = urllib.parse.unquote(url.path)
            if path == "/api/models":
                hub.queries.append(urllib.parse.parse_qs(url.query))
                return self._json([{"id": r, "sha": repo.sha, "downloads": repo.downloads} for r, repo in hub.repos.items()])
            if match := API.match(path):
                recursive = urllib.parse.parse_qs(url.query).get("recursive") == ["true"]
                repo = hub.lookup(match["repo"], match["rev"] or "main", dataset=match["type"] == "datasets")
                return self._api(match["repo"], repo, match["kind"], match["path"] or "", recursive)
            if match := RESOLVE.match(path):
                repo = hub.lookup(match["repo"], match["rev"], dataset=bool(match["type"]))
                return self._resolve(match["repo"], repo, match["file"], body)
            self._error(404, "EntryNotFound")

        def _api(self, repo_id: str, repo: Repo | str, kind: str | None, folder: str, recursive: bool) -> None:
            if isinstance(repo, str):
                return self._error(404, repo)
            if kind is None and folder == "auth-check":
                return self._gated(repo_id, repo) if repo.gated else self._json({})
            if kind == "tree":
                return self._json(_tree(repo, folder, recursive))
            self._json({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False, "gated": False,
                        "disabled": False, "downloads": repo.downloads, "tags": [],
                        "siblings": [{"rfilename": name} for name in repo.files]})

        def _resolve(self, repo_id: str, repo: Repo | str, name: str, body: bool) -> None:
            if isinstance(repo, str):
                return self._error(404, repo)
            file = repo.files.get(name)
            if file is None:
                return self._error(404, "EntryNotFound", repo.sha)
            if repo.gated:
                return self._gated(repo_id, repo)
            start, end = _range(self.headers.get("Range"), file.size)
            self.send_response(206 if start or end < file.size - 1 else 200)
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{file.blob_id}"')
            if file.sha256:
                self.send_header("X-Linked-Etag", f'"{file.sha256}"')
                self.send_header("X-Linked-Size", str(file.size))
            if start or end < file.size - 1:
                self.send_header("Content-Range", f"bytes {start}-{end}/{file.size}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if body:
                self._send_file(repo_id, name, file.path, start, end + 1)

        def _send_file(self, repo_id: str, name: str, path: Path, start: int, stop: int) -> None:
            began, sent = time.time(), 0
            with open(path, "rb") as f:
                f.seek(start)
                while sent < stop - start:
                    chunk = f.read(min(CHUNK, stop - start - sent))
                    hub.pacer.book(len(chunk))
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):  # the client went (failed, or cancelled): as the Hub, say nothing
                        self.close_connection = True
                        return
                    sent += len(chunk)
            hub.transfers.append(Transfer(repo_id, name, began, time.time(), sent))

        def _json(self, value: object) -> None:
            data = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _gated(self, repo_id: str, repo: Repo) -> None:
            self._error(401, "GatedRepo", repo.sha, f"Access to model {repo_id} is restricted. You must have access to it "
                                                    "and be authenticated to access it. Please log in.")

        def _error(self, status: int, code: str, sha: str | None = None, message: str | None = None) -> None:
            data = json.dumps({"error": message or code}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            if message:
                self.send_header("X-Error-Message", message)
            if sha:
                self.send_header("X-Repo-Commit", sha)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def _tree(repo: Repo, folder: str, recursive: bool) -> list[dict]:
    """`folder`'s entries as the Hub lists them: every file below it, or its files and folders one level down."""
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    entries, folders = [], set()
    for name, file in repo.files.items():
        if not name.startswith(prefix):
            continue
        parents = name[len(prefix):].split("/")[:-1]  # the folders between `folder` and the file
        if recursive or not parents:
            entries.append(_tree_entry(name, file))
        listed = len(parents) if recursive else min(len(parents), 1)  # every folder below, or the first one
        folders.update(prefix + "/".join(parents[:depth]) for depth in range(1, listed + 1))
    return [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0} for d in sorted(folders)] + entries


def _tree_entry(name: str, file: File) -> dict:
    entry = {"type": "file", "path": name, "size": file.size, "oid": file.blob_id}
    if file.sha256:
        entry["lfs"] = {"oid": file.sha256, "size": file.size, "pointerSize": 134}
    return entry


def _range(header: str | None, size: int) -> tuple[int, int]:
    """`Range: bytes=A-[B]` as (first, last) byte; the whole file without one."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
    if not match:
        return 0, size - 1
    return int(match[1]), min(int(match[2]) if match[2] else size - 1, size - 1)
