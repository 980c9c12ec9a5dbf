"""TEST DOUBLE of the Kubeflow Pipelines REST API (v2beta1): the few endpoints `bloodcell kfp` uses, with
in-memory state, on 127.0.0.1. It records every request so tests can assert exactly what was sent.
It is not Kubeflow: it checks nothing about pipeline specs beyond parsing the uploaded YAML."""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml

API = "/apis/v2beta1"


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclasses.dataclass
class FakeKfp:
    requests: list[Request] = dataclasses.field(default_factory=list)
    pipelines: dict[str, dict] = dataclasses.field(default_factory=dict)
    versions: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    uploaded_specs: list[dict] = dataclasses.field(default_factory=list)
    experiments: dict[str, dict] = dataclasses.field(default_factory=dict)
    runs: dict[str, dict] = dataclasses.field(default_factory=dict)
    recurring: dict[str, dict] = dataclasses.field(default_factory=dict)
    ids: itertools.count = dataclasses.field(default_factory=lambda: itertools.count(1))

    def calls(self) -> list[tuple[str, str]]:
        """(method, path) of every request, in order."""
        return [(r.method, r.path) for r in self.requests]

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self.ids)}"

    def _upload(self, request: Request) -> dict:
        content_type = request.headers["content-type"]
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + request.body
        )
        parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        package = parts["uploadfile"].get_content()
        self.uploaded_specs.append(list(yaml.safe_load_all(package))[0])
        return {"display_name": request.query["name"][0]}

    def handle(self, request: Request) -> tuple[int, dict]:
        self.requests.append(request)
        path, method = request.path, request.method
        if path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if path == f"{API}/pipelines" and method == "GET":
            wanted = json.loads(request.query["filter"][0])["predicates"][0]["stringValue"]
            found = [p for p in self.pipelines.values() if p["display_name"] == wanted]
            return 200, {"pipelines": found, "total_size": len(found)}
        if path == f"{API}/pipelines/upload":
            pipeline = {"pipeline_id": self._new_id("pipeline"), **self._upload(request)}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            version = {"pipeline_id": pipeline["pipeline_id"], "pipeline_version_id": self._new_id("version"),
                       "display_name": pipeline["display_name"]}  # fmt: skip
            self.versions[pipeline["pipeline_id"]] = [version]
            return 200, pipeline
        if path == f"{API}/pipelines/upload_version":
            pipeline_id = request.query["pipelineid"][0]
            version = {"pipeline_id": pipeline_id, "pipeline_version_id": self._new_id("version"), **self._upload(request)}
            self.versions[pipeline_id].insert(0, version)  # newest first, as sort_by="created_at desc" asks
            return 200, version
        match = re.fullmatch(f"{API}/pipelines/([^/]+)/versions", path)
        if match:
            versions = self.versions.get(match.group(1), [])
            size = int(request.query.get("page_size", ["100"])[0])
            return 200, {"pipeline_versions": versions[:size], "total_size": len(versions)}
        if path == f"{API}/experiments" and method == "GET":
            wanted = json.loads(request.query["filter"][0])["predicates"][0]["stringValue"]
            found = [e for e in self.experiments.values() if e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)}
        if path == f"{API}/experiments" and method == "POST":
            experiment = {"experiment_id": self._new_id("experiment"), **request.json()}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if path == f"{API}/runs" and method == "POST":
            run = {"run_id": self._new_id("run"), "state": "PENDING", **request.json()}
            self.runs[run["run_id"]] = run
            return 200, run
        if path == f"{API}/recurringruns" and method == "POST":
            recurring = {"recurring_run_id": self._new_id("recurring"), "status": "ENABLED", **request.json()}
            self.recurring[recurring["recurring_run_id"]] = recurring
            return 200, recurring
        if path == f"{API}/recurringruns" and method == "GET":
            return 200, {"recurringRuns": list(self.recurring.values()), "total_size": len(self.recurring)}
        match = re.fullmatch(f"{API}/recurringruns/([^/:]+):disable", path)
        if match and match.group(1) in self.recurring:
            self.recurring[match.group(1)]["status"] = "DISABLED"
            return 200, {}
        return 404, {"error": f"test double: no handler for {method} {path}", "code": 5}


def serve(fake: FakeKfp) -> tuple[ThreadingHTTPServer, str]:
    """Starts the test double on a free port of 127.0.0.1; returns the server and its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}  # names are case-insensitive
            request = Request(self.command, url.path, parse_qs(url.query), headers, body)
            status, payload = fake.handle(request)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _reply  # noqa: N815

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
