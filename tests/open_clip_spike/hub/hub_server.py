"""A small in-memory Hugging Face Hub for tests, speaking the endpoints the real ``huggingface_hub`` client uses.

No installable local Hub server exists, so this one is written by hand. It implements only what publishing and
downloading a model repository needs, with the Hub's response shapes and error headers
(``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound``), so the client raises its real exceptions:

- ``POST /api/repos/create``                                  create a model or Space repo (409 if it exists)
- ``POST /api/validate-yaml``                                 README front matter check (YAML must parse)
- ``POST /api/models/{repo}/preupload/{rev}``                 upload mode per file (always "regular": inline
                                                              base64 in the commit; no LFS/Xet storage)
- ``POST /api/models/{repo}/commit/{rev}``                    ndjson commit: header, file, deletedFile
- ``POST /api/models/{repo}/branch/{branch}``                 create a branch (409 if it exists)
- ``GET  /api/models/{repo}[/revision/{rev}]``                model info: sha, siblings, private
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``             file listing (recursive), one page
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``                   file bytes with ``ETag`` (git blob sha1),
                                                              ``X-Repo-Commit``, ``Content-Length``, ``Range``

Spaces (``repo_type='space'``) have the same routes under ``/api/spaces/`` and ``/spaces/{repo}/resolve/``; they are
kept in ``repos`` under ``spaces/ORG/NAME``.
Writes need ``Authorization: Bearer <token>`` when the server has a token; private repos need it for reads too.
Every request's method, path and whether it carried the right token is recorded in ``server.requests``.
Loopback only. Run standalone with ``python tests/open_clip_spike/hub_server.py --port 8080``.
"""
import argparse
import base64
import datetime
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

_INITIAL_GITATTRIBUTES = (b'*.safetensors filter=lfs diff=lfs merge=lfs -text\n'
                          b'*.bin filter=lfs diff=lfs merge=lfs -text\n')
_COMMIT_RE = re.compile(r'^[0-9a-f]{40}$')


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: Optional[str]
    message: str
    files: Dict[str, bytes]
    date: str
    oids: Dict[str, str] = field(default_factory=dict)  # path -> git blob sha1, computed once per commit


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    branches: Dict[str, str] = field(default_factory=dict)
    commits: Dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Optional[Commit]:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if _COMMIT_RE.match(revision) and revision in self.commits:
            return self.commits[revision]
        return None


class HubError(Exception):
    def __init__(self, status: int, code: Optional[str], message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class HubServer:
    """An in-memory Hub on 127.0.0.1; ``port=0`` picks a free port. Use as a context manager or start()/stop()."""

    def __init__(self, port: int = 0, token: Optional[str] = None):
        self.token = token
        self.repos: Dict[str, Repo] = {}
        self.requests: List[Dict[str, object]] = []
        self._lock = threading.Lock()
        self._counter = 0
        handler = type('Handler', (_Handler,), {'hub': self})
        self._httpd = ThreadingHTTPServer(('127.0.0.1', port), handler)
        self._httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def endpoint(self) -> str:
        return f'http://127.0.0.1:{self._httpd.server_address[1]}'

    def start(self) -> 'HubServer':
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> 'HubServer':
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- repository operations (also used by tests to seed repos without going through the client) ---

    def create_repo(self, repo_id: str, private: bool = False, repo_type: str = 'model') -> Repo:
        key = _key(repo_type, repo_id)
        with self._lock:
            if key in self.repos:
                raise HubError(409, None, f'You already created this {repo_type} repo: {repo_id}')
            repo = self.repos[key] = Repo(repo_id, private=private)
            self._commit(repo, 'main', 'initial commit', {'.gitattributes': _INITIAL_GITATTRIBUTES}, [], create=True)
            return repo

    def commit(
            self,
            repo_id: str,
            files: Dict[str, bytes],
            message: str = 'commit',
            branch: str = 'main',
            deletions: Tuple[str, ...] = (),
            parent_commit: Optional[str] = None,
    ) -> str:
        """Commit ``files`` (path -> bytes) on ``branch``; return the new commit oid."""
        with self._lock:
            repo = self._repo(repo_id)
            if branch not in repo.branches:
                raise HubError(404, 'RevisionNotFound', f'Invalid rev id: {branch}')
            if parent_commit is not None and not repo.branches[branch].startswith(parent_commit):
                raise HubError(412, None, 'A commit has happened since. Please refresh and try again.')
            return self._commit(repo, branch, message, files, list(deletions))

    def create_branch(self, repo_id: str, branch: str, starting_point: Optional[str] = None):
        with self._lock:
            repo = self._repo(repo_id)
            if branch in repo.branches:
                raise HubError(409, None, f'Reference already exists: refs/heads/{branch}')
            start = repo.resolve(starting_point or 'main')
            if start is None:
                raise HubError(404, 'RevisionNotFound', f'Invalid rev id: {starting_point}')
            repo.branches[branch] = start.oid

    def _commit(self, repo: Repo, branch: str, message: str, files: Dict[str, bytes], deletions: List[str],
                create: bool = False) -> str:
        parent = None if create else repo.branches[branch]
        tree = dict(repo.commits[parent].files) if parent else {}
        for path in deletions:
            if path not in tree and not any(p.startswith(path.rstrip('/') + '/') for p in tree):
                raise HubError(404, 'EntryNotFound', f"A file with this name doesn't exist: {path}")
            tree = {p: b for p, b in tree.items() if p != path and not p.startswith(path.rstrip('/') + '/')}
        tree.update(files)
        self._counter += 1
        oid = hashlib.sha1(json.dumps([parent, message, self._counter, sorted(tree)]).encode()).hexdigest()
        date = datetime.datetime.now(datetime.timezone.utc).isoformat().replace('+00:00', 'Z')
        oids = {p: (repo.commits[parent].oids[p] if parent and repo.commits[parent].files.get(p) is b else
                    git_blob_sha1(b)) for p, b in tree.items()}
        repo.commits[oid] = Commit(oid, parent, message, tree, date, oids)
        repo.branches[branch] = oid
        return oid

    def _repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, 'RepoNotFound', 'Repository not found')
        return self.repos[repo_id]


def _key(repo_type: str, repo_id: str) -> str:
    """Where ``HubServer.repos`` keeps a repo: model repos by their id, Spaces as ``spaces/ORG/NAME``."""
    return repo_id if repo_type in ('model', 'models', None) else f'spaces/{repo_id}'


def _split_repo_path(parts: List[str]) -> Tuple[str, List[str]]:
    # Model repo ids are "namespace/name" (two segments); legacy one-segment ids are not supported here.
    if len(parts) < 2:
        raise HubError(404, 'RepoNotFound', 'Repository not found')
    return f'{parts[0]}/{parts[1]}', parts[2:]


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = 'HTTP/1.1'

    def log_message(self, format, *args):  # keep test output clean
        pass

    # --- plumbing ---

    def _authorized(self) -> bool:
        auth = self.headers.get('Authorization', '')
        return self.hub.token is None or auth == f'Bearer {self.hub.token}'

    def _body(self) -> bytes:
        length = int(self.headers.get('Content-Length') or 0)
        return self.rfile.read(length) if length else b''

    def _send(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None,
              content_type: str = 'application/json', head: bool = False):
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[Dict[str, str]] = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: HubError, head: bool = False):
        headers = {'X-Error-Message': err.message}
        if err.code:
            headers['X-Error-Code'] = err.code
        self._send(err.status, json.dumps({'error': err.message}).encode(), headers, head=head)

    def _dispatch(self, method: str):
        url = urlsplit(self.path)
        # Keep %2F inside one segment (quoted revisions such as refs%2Fpr%2F1), then unquote each segment.
        parts = [unquote(p) for p in url.path.split('/') if p]
        query = parse_qs(url.query)
        body = self._body() if method == 'POST' else b''
        self.hub.requests.append(dict(method=method, path=url.path, authorized=self._authorized(),
                                      has_auth='Authorization' in self.headers))
        try:
            self._route(method, parts, query, body)
        except HubError as e:
            self._error(e, head=method == 'HEAD')

    def do_GET(self):
        self._dispatch('GET')

    def do_HEAD(self):
        self._dispatch('HEAD')

    def do_POST(self):
        self._dispatch('POST')

    # --- routes ---

    def _route(self, method: str, parts: List[str], query: Dict[str, List[str]], body: bytes):
        if parts[:1] == ['api']:
            if method == 'POST' and parts[1:] == ['repos', 'create']:
                return self._create_repo(json.loads(body or b'{}'))
            if method == 'POST' and parts[1:] == ['validate-yaml']:
                return self._validate_yaml(json.loads(body or b'{}'))
            if parts[1:2] in (['models'], ['spaces']):
                repo_id, rest = _split_repo_path(parts[2:])
                return self._model_api(method, _key(parts[1], repo_id), rest, query, body)
            raise HubError(404, None, f'Unknown API route /{"/".join(parts)}')
        if len(parts) >= 6 and parts[0] == 'spaces' and parts[3] == 'resolve' and method in ('GET', 'HEAD'):
            return self._resolve(method, _key('space', f'{parts[1]}/{parts[2]}'), parts[4], '/'.join(parts[5:]))
        if len(parts) >= 5 and parts[2] == 'resolve' and method in ('GET', 'HEAD'):
            repo_id = f'{parts[0]}/{parts[1]}'
            return self._resolve(method, repo_id, parts[3], '/'.join(parts[4:]))
        raise HubError(404, None, f'Not found: /{"/".join(parts)}')

    def _need_write(self):
        if not self._authorized():
            raise HubError(401, None, 'Invalid credentials in Authorization header')

    def _readable_repo(self, repo_id: str) -> Repo:
        repo = self.hub._repo(repo_id)
        if repo.private and not self._authorized():
            # The Hub answers a private repo without credentials exactly like a missing one.
            raise HubError(404, 'RepoNotFound', 'Repository not found')
        return repo

    def _commit_for(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, 'RevisionNotFound', f'Invalid rev id: {revision}')
        return commit

    def _create_repo(self, payload: Dict):
        self._need_write()
        repo_type = payload.get('type') or 'model'
        if repo_type not in ('model', 'space'):
            raise HubError(400, None, 'This test Hub only hosts model repos and Spaces')
        if repo_type == 'space' and payload.get('sdk') not in ('gradio', 'docker', 'static', 'streamlit'):
            raise HubError(400, None, f"A Space needs an sdk, got {payload.get('sdk')!r}")
        name, org = payload.get('name'), payload.get('organization')
        if not name or not org:
            raise HubError(400, None, 'Repo id must be "namespace/name"')
        repo_id = f'{org}/{name}'
        try:
            private = payload.get('visibility') == 'private' or bool(payload.get('private'))
            self.hub.create_repo(repo_id, private=private, repo_type=repo_type)
        except HubError as e:
            return self._json(409, {'error': e.message, 'url': f'{self.hub.endpoint}/{_key(repo_type, repo_id)}'})
        self._json(200, {'url': f'{self.hub.endpoint}/{_key(repo_type, repo_id)}', 'name': repo_id})

    def _validate_yaml(self, payload: Dict):
        content = payload.get('content', '')
        errors = []
        if content.startswith('---'):
            match = re.match(r'^---\s*\n(.*?)\n---\s*(\n|$)', content, re.S)
            if match is None:
                errors.append({'message': 'README front matter is not closed by ---'})
            else:
                try:
                    meta = yaml.safe_load(match.group(1))
                    if meta is not None and not isinstance(meta, dict):
                        errors.append({'message': 'README front matter must be a mapping'})
                except yaml.YAMLError as e:
                    errors.append({'message': f'Invalid YAML: {e}'})
        self._json(400 if errors else 200, {'errors': errors, 'warnings': []})

    def _model_api(self, method: str, repo_id: str, rest: List[str], query: Dict[str, List[str]], body: bytes):
        if method == 'GET' and (not rest or rest[0] == 'revision'):
            repo = self._readable_repo(repo_id)
            commit = self._commit_for(repo, rest[1] if len(rest) > 1 else 'main')
            return self._json(200, self._model_info(repo, commit))
        if method == 'GET' and rest[:1] == ['tree'] and len(rest) >= 2:
            repo = self._readable_repo(repo_id)
            commit = self._commit_for(repo, rest[1])
            return self._json(200, self._tree(commit, '/'.join(rest[2:]), query.get('recursive', ['false'])[0]))
        if method == 'POST' and rest[:1] == ['preupload'] and len(rest) == 2:
            self._need_write()
            repo = self.hub._repo(repo_id)
            commit = self._commit_for(repo, rest[1])
            files = json.loads(body)['files']
            return self._json(200, {'files': [
                dict(path=f['path'], uploadMode='regular', shouldIgnore=False,
                     oid=commit.oids.get(f['path']))
                for f in files], 'commitOid': commit.oid})
        if method == 'POST' and rest[:1] == ['commit'] and len(rest) == 2:
            self._need_write()
            return self._create_commit(repo_id, rest[1], body)
        if method == 'POST' and rest[:1] == ['branch'] and len(rest) >= 2:
            self._need_write()
            payload = json.loads(body or b'{}')
            try:
                self.hub.create_branch(repo_id, '/'.join(rest[1:]), payload.get('startingPoint'))
            except HubError as e:
                if e.status == 409:
                    return self._json(409, {'error': e.message})
                raise
            return self._json(200, {})
        raise HubError(404, None, f'Unknown model API route {"/".join(rest)}')

    def _create_commit(self, repo_id: str, branch: str, body: bytes):
        header, files, deletions = None, {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item['key'], item['value']
            if key == 'header':
                header = value
            elif key == 'file':
                if value.get('encoding') != 'base64':
                    raise HubError(400, None, f"Unsupported encoding {value.get('encoding')!r}")
                files[value['path']] = base64.b64decode(value['content'])
            elif key in ('deletedFile', 'deletedFolder'):
                deletions.append(value['path'])
            else:
                # lfsFile needs LFS storage, which this server does not have (preupload never asks for it).
                raise HubError(400, None, f'Unsupported commit operation {key!r}')
        if header is None:
            raise HubError(400, None, 'Commit payload has no header')
        oid = self.hub.commit(repo_id, files, header.get('summary', ''), branch=branch, deletions=tuple(deletions),
                              parent_commit=header.get('parentCommit'))
        self._json(200, {'commitUrl': f'{self.hub.endpoint}/{repo_id}/commit/{oid}', 'commitOid': oid,
                         'pullRequestUrl': None, 'success': True})

    def _model_info(self, repo: Repo, commit: Commit) -> Dict:
        return {
            '_id': hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            'id': repo.repo_id, 'modelId': repo.repo_id, 'author': repo.repo_id.split('/')[0],
            'sha': commit.oid, 'private': repo.private, 'gated': False, 'disabled': False,
            'downloads': 0, 'likes': 0, 'tags': [], 'lastModified': commit.date, 'createdAt': commit.date,
            'siblings': [{'rfilename': p} for p in sorted(commit.files)],
        }

    def _tree(self, commit: Commit, path: str, recursive: str) -> List[Dict]:
        prefix = path.strip('/') + '/' if path else ''
        if path and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, 'EntryNotFound', f'{path} does not exist')
        entries, folders = [], set()
        for p in sorted(commit.files):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            if '/' in rel and recursive.lower() != 'true':
                folders.add(prefix + rel.split('/')[0])
                continue
            data = commit.files[p]
            entries.append({'type': 'file', 'oid': commit.oids[p], 'size': len(data), 'path': p})
        entries += [{'type': 'directory', 'oid': hashlib.sha1(f.encode()).hexdigest(), 'size': 0, 'path': f}
                    for f in sorted(folders)]
        return entries

    def _resolve(self, method: str, repo_id: str, revision: str, path: str):
        head = method == 'HEAD'
        repo = self._readable_repo(repo_id)
        commit = self._commit_for(repo, revision)
        if path not in commit.files:
            raise HubError(404, 'EntryNotFound', 'Entry not found')
        data = commit.files[path]
        headers = {'ETag': f'"{commit.oids[path]}"', 'X-Repo-Commit': commit.oid, 'Accept-Ranges': 'bytes'}
        status, body = 200, data
        range_header = self.headers.get('Range')
        if range_header and not head:
            match = re.match(r'bytes=(\d*)-(\d*)$', range_header.strip())
            if match is None:
                raise HubError(416, None, f'Bad Range {range_header!r}')
            start = int(match.group(1) or 0)
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            body = data[start:end + 1]
            status = 206
            headers['Content-Range'] = f'bytes {start}-{start + len(body) - 1}/{len(data)}'
        self._send(status, body, headers, content_type='application/octet-stream', head=head)


def main(argv: Optional[List[str]] = None):
    p = argparse.ArgumentParser(description='In-memory Hugging Face Hub for tests (loopback only).')
    p.add_argument('--port', type=int, default=0)
    p.add_argument('--token', default=None, help='token required for writes (default: none required)')
    args = p.parse_args(argv)
    server = HubServer(args.port, token=args.token)
    print(f'serving on {server.endpoint}', flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == '__main__':
    main()
