"""A small local server speaking the Hugging Face Hub HTTP API, for publish tests without the internet.

It implements what the real `huggingface_hub` client and `datasets.load_dataset` use for dataset repos: repo
create, repo info, preupload (with remote oids, so unchanged files are skipped), the LFS batch + basic upload,
NDJSON commits, tree and paths-info listings, and resolve (with Range). Commits are atomic: a failed commit
(`fail_commits` injects HTTP 500) changes nothing. Every request's headers are recorded so tests can check
what the client sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id: str, private: bool):
        self.repo_id = repo_id
        self.private = private
        self.files: dict[str, bytes] = {}
        self.lfs: set[str] = set()  # paths stored as LFS
        self.commits: list[str] = [hashlib.sha1(repo_id.encode()).hexdigest()]

    @property
    def sha(self) -> str:
        return self.commits[-1]


class HubState:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # LFS objects by sha256
        self.fail_commits = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()


def _entry(repo: Repo, path: str) -> dict:
    data = repo.files[path]
    entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
    if path in repo.lfs:
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def _tree(repo: Repo, base: str, recursive: bool) -> list[dict]:
    base = base.strip("/")
    prefix = f"{base}/" if base else ""
    out, dirs = [], set()
    for path in sorted(repo.files):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):]
        if "/" in rest and not recursive:
            dirs.add(prefix + rest.split("/")[0])
            continue
        if recursive:
            parts = rest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add(prefix + "/".join(parts[:i]))
        out.append(_entry(repo, path))
    return [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
            for d in sorted(dirs)] + out


def make_handler(state: HubState, endpoint_of):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        # -- helpers
        def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None):
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _repo(self, repo_id: str) -> Repo | None:
            repo = state.repos.get(repo_id)
            if repo is None:
                self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return repo

        def _route(self):
            state.requests.append((self.command, self.path, dict(self.headers)))
            url = urllib.parse.urlsplit(self.path)
            parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
            query = urllib.parse.parse_qs(url.query)
            return parts, query

        # -- verbs
        def do_POST(self):
            parts, query = self._route()
            body = self._body()
            if parts[:2] == ["api", "validate-yaml"]:  # the card's metadata: this server accepts any
                return self._send(200, {"errors": [], "warnings": []})
            if parts[:3] == ["api", "repos", "create"]:
                data = json.loads(body)
                name = data["name"] if "/" in data["name"] else f"{data.get('organization')}/{data['name']}"
                with state.lock:
                    if name in state.repos:
                        return self._send(409, {"error": "You already created this dataset repo",
                                                "url": f"{endpoint_of()}/datasets/{name}"})
                    state.repos[name] = Repo(name, bool(data.get("private")))
                return self._send(200, {"url": f"{endpoint_of()}/datasets/{name}", "name": name})
            if parts[0] == "api" and parts[1] == "datasets":
                repo_id, action = f"{parts[2]}/{parts[3]}", parts[4]
                repo = self._repo(repo_id)
                if repo is None:
                    return
                if action == "preupload":
                    files = []
                    for f in json.loads(body)["files"]:
                        lfs = f["path"].endswith((".parquet", ".arrow"))
                        remote = repo.files.get(f["path"])
                        oid = None
                        if remote is not None:
                            oid = hashlib.sha256(remote).hexdigest() if lfs else git_blob_sha1(remote)
                        files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                                      "shouldIgnore": False, "oid": oid})
                    return self._send(200, {"files": files, "commitOid": repo.sha})
                if action == "commit":
                    return self._commit(repo, body)
                if action == "paths-info":
                    form = urllib.parse.parse_qs(body.decode())
                    paths = form.get("paths", [])
                    out = [_entry(repo, p) for p in paths if p in repo.files]
                    out += [{"type": "directory", "path": p.strip("/"), "oid": "0" * 40, "size": 0} for p in paths
                            if p not in repo.files and any(f.startswith(p.strip("/") + "/") for f in repo.files)]
                    return self._send(200, out)
            if len(parts) >= 4 and parts[0] == "datasets" and parts[2].endswith(".git") and parts[-1] == "batch":
                data = json.loads(body)
                objects = []
                for obj in data["objects"]:
                    item = {"oid": obj["oid"], "size": obj["size"]}
                    if obj["oid"] not in state.blobs:
                        item["actions"] = {"upload": {"href": f"{endpoint_of()}/lfs-upload/{obj['oid']}"}}
                    objects.append(item)
                return self._send(200, {"transfer": "basic", "objects": objects},
                                  {"Content-Type": "application/vnd.git-lfs+json"})
            self._send(404, {"error": f"unknown route POST {self.path}"})

        def do_PUT(self):
            parts, _ = self._route()
            body = self._body()
            if parts[0] == "lfs-upload":
                if hashlib.sha256(body).hexdigest() != parts[1]:
                    return self._send(400, {"error": "sha256 mismatch"})
                state.blobs[parts[1]] = body
                return self._send(200, b"")
            self._send(404, {"error": f"unknown route PUT {self.path}"})

        def _commit(self, repo: Repo, body: bytes):
            with state.lock:
                if state.fail_commits:
                    state.fail_commits -= 1
                    return self._send(500, {"error": "injected internal error"})
                files = dict(repo.files)
                lfs = set(repo.lfs)
                summary = ""
                for line in body.decode().splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    key, value = item["key"], item["value"]
                    if key == "header":
                        summary = value.get("summary", "")
                    elif key == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                        lfs.discard(value["path"])
                    elif key == "lfsFile":
                        blob = state.blobs.get(value["oid"])
                        if blob is None:
                            return self._send(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                        files[value["path"]] = blob
                        lfs.add(value["path"])
                    elif key == "deletedFile":
                        files.pop(value["path"], None)
                    elif key == "deletedFolder":
                        files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                sha = hashlib.sha1((repo.sha + summary + json.dumps(
                    sorted((p, git_blob_sha1(d)) for p, d in files.items()))).encode()).hexdigest()
                repo.files, repo.lfs = files, lfs
                repo.commits.append(sha)
            url = f"{endpoint_of()}/datasets/{repo.repo_id}/commit/{sha}"
            self._send(200, {"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            parts, query = self._route()
            if parts[:2] == ["api", "agent-harnesses"]:  # the client's agent registry: none here
                return self._send(200, {"standardEnvVars": [], "harnesses": {}})
            if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
                repo = self._repo(f"{parts[2]}/{parts[3]}")
                if repo is None:
                    return
                if len(parts) == 4 or parts[4] == "revision":
                    return self._send(200, {
                        "id": repo.repo_id, "_id": repo.repo_id, "sha": repo.sha, "private": repo.private,
                        "siblings": [{"rfilename": p} for p in sorted(repo.files)], "tags": [], "disabled": False,
                        "gated": False, "downloads": 0, "likes": 0, "lastModified": "2026-01-01T00:00:00.000Z",
                        "cardData": {}})
                if parts[4] == "tree":
                    base = "/".join(parts[6:])
                    if base and base not in repo.files and not any(p.startswith(base.strip("/") + "/")
                                                                   for p in repo.files):
                        return self._send(404, {"error": "not found"}, {"X-Error-Code": "EntryNotFound"})
                    recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                    return self._send(200, _tree(repo, base, recursive))
                if parts[4] == "refs":
                    return self._send(200, {"branches": [{"name": "main", "ref": "refs/heads/main",
                                                          "targetCommit": repo.sha}], "tags": [], "converts": []})
            if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve":
                repo = self._repo(f"{parts[1]}/{parts[2]}")
                if repo is None:
                    return
                path = "/".join(parts[5:])
                data = repo.files.get(path)
                if data is None:
                    return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{git_blob_sha1(data)}"',
                           "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
                if path in repo.lfs:
                    headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
                    headers["X-Linked-Size"] = str(len(data))
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start_s, end_s = rng[6:].split("-")
                    start = int(start_s) if start_s else len(data) - int(end_s)
                    end = int(end_s) if end_s and start_s else len(data) - 1
                    end = min(end, len(data) - 1)
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    return self._send(206, data[start:end + 1], headers)
                return self._send(200, data, headers)
            self._send(404, {"error": f"unknown route GET {self.path}"})

    return Handler


class HubServer:
    def __init__(self, port: int):
        self.state = HubState()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(self.state, lambda: self.endpoint))
        self.endpoint = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
