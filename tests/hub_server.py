"""A Hugging Face Hub stand-in on loopback, speaking the HTTP endpoints `huggingface_hub` uses.

No Hub-compatible server on PyPI can be started by the tests: `hf-local-hub` is a launcher for a Go
binary that PyPI does not ship, and `olah` is a read-only mirror (no create, commit, branch or tag
routes). This one keeps model repos in memory with real git-like semantics for what compressmem
needs: repo creation (public or private), commits of regular files (NDJSON), branches and tags,
revision and tree listings, file resolution with `X-Repo-Commit` and `ETag` headers, and `whoami`.
Private repos answer 401 to requests without a valid token, as the Hub does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

USER = "tester"


@dataclass
class Repo:
    private: bool
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """The commit `revision` (a branch, a tag or a commit id) names, if any."""
        return self.refs.get(revision) or (revision if revision in self.commits else None)

    def commit(self, parent: str | None, files: dict[str, bytes], summary: str) -> str:
        sha = hashlib.sha1(json.dumps([parent, summary, sorted((p, _blob_id(c)) for p, c in files.items())])
                           .encode()).hexdigest()
        self.commits[sha] = files
        return sha


class HubServer:
    """Serve on 127.0.0.1 in a background thread; `url` is the endpoint, `token` the owner's token."""

    def __init__(self, token: str = "hf_test_owner_token") -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Reply(Exception):
    def __init__(self, status: int, body: object = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def _not_found(code: str, message: str) -> _Reply:
    return _Reply(404, {"error": message}, {"X-Error-Code": code})


def _validate_card(content: str) -> _Reply:
    """As the Hub checks a README.md before committing it: its front matter must be a YAML mapping."""
    if not content.startswith("---\n"):
        return _Reply(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
    front = content[4:].split("\n---", 1)[0]
    try:
        data = yaml.safe_load(front)
    except yaml.YAMLError as error:
        return _Reply(400, {"error": f"Invalid YAML in model card metadata: {error}"})
    if not isinstance(data, dict):
        return _Reply(400, {"error": "model card metadata must be a YAML mapping"})
    return _Reply(200, {"errors": [], "warnings": []})


def _blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
            try:
                with hub.lock:
                    reply = self._route(method, parts)
            except _Reply as raised:
                reply = raised
            self._send(method, reply)

        def _route(self, method: str, parts: list[str]) -> _Reply:
            if parts[:2] == ["api", "whoami-v2"]:
                self._require_token()
                return _Reply(200, {"type": "user", "name": USER, "auth": {"accessToken": {"role": "write"}}})
            if method == "POST" and parts[:2] == ["api", "validate-yaml"]:
                return _validate_card(self._json()["content"])
            if method == "POST" and parts[:3] == ["api", "repos", "create"]:
                return self._create_repo(self._json())
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id, action, rest = "/".join(parts[2:4]), parts[4] if len(parts) > 4 else "", parts[5:]
                return self._api(method, repo_id, action, rest)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            raise _Reply(404, {"error": f"no route for {method} {self.path}"})

        def _api(self, method: str, repo_id: str, action: str, rest: list[str]) -> _Reply:
            repo = self._readable(repo_id)
            if method == "GET" and action in ("", "revision"):
                return self._info(repo_id, repo, rest[0] if rest else "main")
            if method == "GET" and action == "tree":
                return self._tree(repo, rest[0], "/".join(rest[1:]))
            self._require_token()
            if action == "preupload":
                files = self._json()["files"]
                return _Reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                              for f in files]})
            if action == "commit":
                return self._commit(repo_id, repo, rest[0])
            if action in ("branch", "tag"):
                return self._ref(repo, action, rest[0], self._json())
            raise _Reply(404, {"error": f"no route for {method} {self.path}"})

        def _create_repo(self, payload: dict) -> _Reply:
            self._require_token()
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            url = {"url": f"{hub.url}/{repo_id}"}
            if repo_id in hub.repos:
                raise _Reply(409, {"error": "You already created this model repo", **url})
            private = payload.get("private", payload.get("visibility") == "private")
            repo = hub.repos[repo_id] = Repo(private=bool(private))
            repo.refs["main"] = repo.commit(None, {".gitattributes": b"*.safetensors filter=lfs\n"}, "initial commit")
            return _Reply(200, url)

        def _info(self, repo_id: str, repo: Repo, revision: str) -> _Reply:
            sha = self._commit_of(repo, revision)
            siblings = [{"rfilename": path} for path in sorted(repo.commits[sha])]
            return _Reply(200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                                "siblings": siblings, "tags": [], "downloads": 0, "likes": 0})

        def _tree(self, repo: Repo, revision: str, folder: str) -> _Reply:
            files = repo.commits[self._commit_of(repo, revision)]
            prefix = f"{folder}/" if folder else ""
            entries = [{"type": "file", "oid": _blob_id(content), "size": len(content), "path": path}
                       for path, content in sorted(files.items()) if path.startswith(prefix)]
            return _Reply(200, entries)

        def _commit(self, repo_id: str, repo: Repo, revision: str) -> _Reply:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
            parent = self._commit_of(repo, revision)
            if revision not in repo.refs:
                raise _Reply(400, {"error": f"cannot commit to {revision}: not a branch"})
            files = dict(repo.commits[parent])
            summary = ""
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    summary = value["summary"]
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                else:
                    raise _Reply(400, {"error": f"this test server does not support {key} operations"})
            sha = repo.refs[revision] = repo.commit(parent, files, summary)
            return _Reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                                "pullRequestUrl": None})

        def _ref(self, repo: Repo, kind: str, name: str, payload: dict) -> _Reply:
            target = name if kind == "tag" else payload.get("startingPoint") or "main"
            ref = payload["tag"] if kind == "tag" else name
            if ref in repo.refs:
                raise _Reply(409, {"error": f"{kind} {ref} already exists"})
            repo.refs[ref] = self._commit_of(repo, target)
            return _Reply(200, {})

        def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> _Reply:
            repo = self._readable(repo_id)
            sha = self._commit_of(repo, revision)
            if path not in repo.commits[sha]:
                raise _Reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
            content = repo.commits[sha][path]
            headers = {"X-Repo-Commit": sha, "ETag": f'"{_blob_id(content)}"',
                       "Content-Type": "application/octet-stream"}
            return _Reply(200, content, headers)

        def _readable(self, repo_id: str) -> Repo:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                status = 401 if not self._authorized() else 404
                raise _Reply(status, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return repo

        def _commit_of(self, repo: Repo, revision: str) -> str:
            sha = repo.resolve(revision)
            if sha is None:
                raise _Reply(404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
            return sha

        def _authorized(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _require_token(self) -> None:
            if not self._authorized():
                raise _Reply(401, {"error": "Invalid credentials in Authorization header"})

        def _json(self) -> dict:
            return json.loads(self.body or b"{}")

        def _send(self, method: str, reply: _Reply) -> None:
            body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            headers = {"Content-Type": "application/json", **reply.headers, "Content-Length": str(len(body))}
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(body)

    return Handler
