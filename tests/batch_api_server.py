"""A local server speaking two providers' batch APIs as their public references document them, for tests and
for trying a pipeline's `openai_batch` / `anthropic_batch` engine without a provider account:

- OpenAI Batch: `POST /v1/files` (multipart, purpose=batch), `GET /v1/files/{id}/content`, `POST /v1/batches`,
  `GET /v1/batches/{id}`, `GET /v1/batches` (list, `after`), `POST /v1/batches/{id}/cancel`; statuses validating,
  in_progress, finalizing, completed, expired, cancelling, cancelled, failed (an input file that does not
  validate); output and error files of `{id, custom_id, response: {status_code, request_id, body}, error}` lines,
  `batch_expired` errors for what an expired batch did not reach.
- Anthropic Message Batches: `POST /v1/messages/batches`, `GET /v1/messages/batches/{id}` (processing_status
  in_progress, canceling, ended; request_counts; results_url), `GET .../results` (JSONL of `{custom_id, result:
  {type: succeeded | errored | canceled | expired, ...}}`), `POST .../cancel`.

Each request line goes to `--backend` (a real chat completions server, e.g. `python -m curate.engines.llama_server`),
so the answers are a real model's; without a backend the answers are canned ("canned answer ...": never a quality
figure). Faults a provider may show are injected through `POST /_control` (JSON, merged): `hold` (batches stay
in_progress until it is false), `fail_next: [status, count]` (the next `count` request lines get that HTTP status),
`expire_next: n` (the next n batches expire after answering half of their lines), `fail_batches: n` (the next n
batches fail validation). `GET /_log` lists what clients did (uploads and creates with their custom_ids, cancels).

    python tests/batch_api_server.py --port 8100 --backend http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class State:
    def __init__(self, backend: str | None, step_s: float):
        self.backend = backend.rstrip("/") if backend else None
        self.step_s = step_s
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.log: list[dict] = []
        self.controls: dict[str, Any] = {"hold": False, "fail_next": None, "expire_next": 0, "fail_batches": 0}
        self.lock = threading.Lock()

    def take(self, name: str) -> bool:
        """Use up one of a counted fault."""
        with self.lock:
            if self.controls.get(name):
                self.controls[name] -= 1
                return True
            return False

    def fault(self) -> int | None:
        with self.lock:
            spec = self.controls.get("fail_next")
            if spec and spec[1] > 0:
                spec[1] -= 1
                return int(spec[0])
        return None


def chat(state: State, body: dict) -> tuple[int, dict]:
    """One chat completion: the backend's, or a canned one."""
    if state.backend:
        req = urllib.request.Request(state.backend + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {"error": {"message": exc.read().decode(errors="replace")[:500]}}
    words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    return 200, {"id": f"chatcmpl-{digest}", "object": "chat.completion", "model": body.get("model"),
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": f"canned answer {digest}"},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": words, "completion_tokens": 3, "total_tokens": words + 3}}


def answer(state: State, body: dict) -> tuple[int, dict]:
    status = state.fault()
    if status is not None:
        return status, {"error": {"message": f"injected HTTP {status}", "type": "server_error"}}
    return chat(state, body)


# -- OpenAI --------------------------------------------------------------------------------------------------
def openai_lines(state: State, batch: dict) -> list[dict] | str:
    """The batch's input lines, or why the file does not validate."""
    if state.take("fail_batches"):
        return "injected: the input file does not validate"
    lines, seen = [], set()
    for n, text in enumerate(state.files[batch["input_file_id"]].decode().splitlines(), 1):
        if not text.strip():
            continue
        line = json.loads(text)
        if line.get("method") != "POST" or line.get("url") != batch["endpoint"] or "body" not in line:
            return f"line {n}: method must be POST and url {batch['endpoint']}"
        if not isinstance(line.get("custom_id"), str) or line["custom_id"] in seen:
            return f"line {n}: custom_id missing or repeated"
        seen.add(line["custom_id"])
        lines.append(line)
    return lines


def run_openai(state: State, batch: dict) -> None:
    time.sleep(state.step_s)
    lines = openai_lines(state, batch)
    if isinstance(lines, str):
        batch.update(status="failed", failed_at=int(time.time()),
                     errors={"object": "list", "data": [{"code": "invalid_request", "message": lines, "line": None}]})
        return
    batch.update(status="in_progress", in_progress_at=int(time.time()))
    batch["request_counts"]["total"] = len(lines)
    while state.controls["hold"] and batch["status"] == "in_progress":
        time.sleep(0.05)
    expire = state.take("expire_next")
    out, err = [], []
    for i, line in enumerate(lines):
        rid = f"batch_req_{uuid.uuid4().hex[:12]}"
        if batch["status"] == "cancelling" or (expire and i >= len(lines) // 2):
            code = "batch_cancelled" if batch["status"] == "cancelling" else "batch_expired"
            err.append({"id": rid, "custom_id": line["custom_id"], "response": None,
                        "error": {"code": code, "message": "This request could not be executed before the "
                                  "completion window expired." if code == "batch_expired" else "cancelled"}})
            continue
        status, body = answer(state, line["body"])
        entry = {"id": rid, "custom_id": line["custom_id"], "response": {"status_code": status, "request_id": rid,
                                                                        "body": body}, "error": None}
        (out if status == 200 else err).append(entry)
        batch["request_counts"]["completed" if status == 200 else "failed"] += 1
    batch["status"] = "finalizing"
    time.sleep(state.step_s)
    for name, rows in (("output_file_id", out), ("error_file_id", err)):
        if rows:
            fid = f"file-{uuid.uuid4().hex[:24]}"
            state.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
            batch[name] = fid
    final = "cancelled" if batch["status"] == "cancelling" else "expired" if expire else "completed"
    batch.update(status=final, **{f"{final}_at": int(time.time())})


# -- Anthropic -----------------------------------------------------------------------------------------------
def to_openai(params: dict) -> dict:
    """A Messages API request as a chat completions body (for the backend)."""
    def content(c):
        if isinstance(c, str):
            return c
        parts = []
        for b in c:
            if b.get("type") == "image":
                src = b["source"]
                url = src.get("url") or f"data:{src['media_type']};base64,{src['data']}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                parts.append({"type": "text", "text": b.get("text", "")})
        return parts

    messages = ([{"role": "system", "content": params["system"]}] if params.get("system") else []) + [
        {"role": m["role"], "content": content(m["content"])} for m in params["messages"]]
    return {"model": params["model"], "messages": messages, "max_tokens": params["max_tokens"],
            **({"temperature": params["temperature"]} if "temperature" in params else {})}


def run_anthropic(state: State, batch: dict, requests: list[dict]) -> None:
    time.sleep(state.step_s)
    while state.controls["hold"] and batch["processing_status"] == "in_progress":
        time.sleep(0.05)
    expire = state.take("expire_next")
    counts = batch["request_counts"]
    rows = []
    for i, req in enumerate(requests):
        counts["processing"] -= 1
        if batch["processing_status"] == "canceling":
            rows.append({"custom_id": req["custom_id"], "result": {"type": "canceled"}})
            counts["canceled"] += 1
            continue
        if expire and i >= len(requests) // 2:
            rows.append({"custom_id": req["custom_id"], "result": {"type": "expired"}})
            counts["expired"] += 1
            continue
        status, body = answer(state, to_openai(req["params"]))
        if status != 200:
            kind = "invalid_request_error" if status < 500 and status != 429 else (
                "rate_limit_error" if status == 429 else "api_error")
            rows.append({"custom_id": req["custom_id"], "result": {"type": "errored", "error": {
                "type": "error", "error": {"type": kind, "message": str(body.get("error"))[:200]}}}})
            counts["errored"] += 1
            continue
        choice, usage = body["choices"][0], body.get("usage") or {}
        rows.append({"custom_id": req["custom_id"], "result": {"type": "succeeded", "message": {
            "id": f"msg_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant", "model": body.get("model"),
            "content": [{"type": "text", "text": choice["message"].get("content") or ""}],
            "stop_reason": "max_tokens" if choice.get("finish_reason") == "length" else "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": usage.get("prompt_tokens", 0),
                                             "output_tokens": usage.get("completion_tokens", 0)}}}})
        counts["succeeded"] += 1
    state.files[batch["id"]] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    batch.update(processing_status="ended", ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 results_url=f"{batch['_base']}/v1/messages/batches/{batch['id']}/results")


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code: int, payload: Any, raw: bytes | None = None) -> None:
            data = raw if raw is not None else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/jsonl" if raw is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _public(self, batch: dict) -> dict:
            return {k: v for k, v in batch.items() if not k.startswith("_")}

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/_log":
                return self._send(200, state.log)
            if m := re.fullmatch(r"/v1/files/([\w-]+)/content", path):
                return self._send(200, None, state.files[m[1]]) if m[1] in state.files else self._send(404, {})
            if m := re.fullmatch(r"/v1/batches/([\w-]+)", path):
                batch = state.batches.get(m[1])
                return self._send(200, self._public(batch)) if batch else self._send(404, {"error": "no batch"})
            if path == "/v1/batches":
                query = dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&") if "=" in p)
                items = [b for b in reversed(state.batches.values()) if b.get("object") == "batch"]
                if "after" in query:
                    ids = [b["id"] for b in items]
                    items = items[ids.index(query["after"]) + 1:] if query["after"] in ids else []
                limit = int(query.get("limit", 20))
                return self._send(200, {"object": "list", "data": [self._public(b) for b in items[:limit]],
                                        "has_more": len(items) > limit})
            if m := re.fullmatch(r"/v1/messages/batches/([\w-]+)/results", path):
                raw = state.files.get(m[1])
                return self._send(200, None, raw) if raw is not None else self._send(404, {})
            if m := re.fullmatch(r"/v1/messages/batches/([\w-]+)", path):
                batch = state.batches.get(m[1])
                return self._send(200, self._public(batch)) if batch else self._send(404, {})
            self._send(404, {"error": {"message": f"no route {path}"}})

        def do_POST(self):
            path = self.path.split("?")[0]
            if path == "/_control":
                with state.lock:
                    state.controls.update(json.loads(self._body()))
                return self._send(200, state.controls)
            if path == "/v1/files":
                ctype = self.headers["Content-Type"]
                msg = email.parser.BytesParser().parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + self._body())
                fields = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                          for p in msg.get_payload()}
                if fields.get("purpose") != b"batch" or "file" not in fields:
                    return self._send(400, {"error": {"message": "purpose=batch and a file are required"}})
                fid = f"file-{uuid.uuid4().hex[:24]}"
                state.files[fid] = fields["file"]
                ids = [json.loads(t).get("custom_id") for t in fields["file"].decode().splitlines() if t.strip()]
                state.log.append({"op": "upload", "file": fid, "custom_ids": ids})
                return self._send(200, {"id": fid, "object": "file", "bytes": len(fields["file"]),
                                        "created_at": int(time.time()), "filename": "batch.jsonl", "purpose": "batch"})
            if path == "/v1/batches":
                req = json.loads(self._body())
                if req.get("input_file_id") not in state.files or req.get("completion_window") != "24h":
                    return self._send(400, {"error": {"message": "input_file_id unknown or completion_window not 24h"}})
                bid = f"batch_{uuid.uuid4().hex[:24]}"
                batch = {"id": bid, "object": "batch", "endpoint": req.get("endpoint"), "errors": None,
                         "input_file_id": req["input_file_id"], "completion_window": "24h", "status": "validating",
                         "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
                         "request_counts": {"total": 0, "completed": 0, "failed": 0},
                         "metadata": req.get("metadata")}
                state.batches[bid] = batch
                ids = [json.loads(t).get("custom_id") for t in state.files[req["input_file_id"]].decode().splitlines()
                       if t.strip()]
                state.log.append({"op": "create", "api": "openai", "batch": bid, "custom_ids": ids})
                threading.Thread(target=run_openai, args=(state, batch), daemon=True).start()
                return self._send(200, self._public(batch))
            if m := re.fullmatch(r"/v1/batches/([\w-]+)/cancel", path):
                batch = state.batches.get(m[1])
                if not batch:
                    return self._send(404, {})
                if batch["status"] in ("validating", "in_progress"):
                    batch["status"] = "cancelling"
                state.log.append({"op": "cancel", "batch": m[1]})
                return self._send(200, self._public(batch))
            if path == "/v1/messages/batches":
                requests = json.loads(self._body()).get("requests") or []
                ids = [r.get("custom_id") for r in requests]
                bad = [i for i in ids if not isinstance(i, str) or not CUSTOM_ID.match(i)]
                if bad or len(set(ids)) != len(ids) or not all("max_tokens" in r.get("params", {}) for r in requests):
                    return self._send(400, {"type": "error", "error": {
                        "type": "invalid_request_error", "message": "custom_id invalid or repeated, or no max_tokens"}})
                bid = f"msgbatch_{uuid.uuid4().hex[:24]}"
                batch = {"id": bid, "type": "message_batch", "processing_status": "in_progress",
                         "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                                            "expired": 0},
                         "ended_at": None, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "cancel_initiated_at": None, "results_url": None,
                         "_base": f"http://{self.headers['Host']}"}
                state.batches[bid] = batch
                state.log.append({"op": "create", "api": "anthropic", "batch": bid, "custom_ids": ids,
                                  "headers": {k: v for k, v in self.headers.items() if k.lower() == "anthropic-version"}})
                threading.Thread(target=run_anthropic, args=(state, batch, requests), daemon=True).start()
                return self._send(200, self._public(batch))
            if m := re.fullmatch(r"/v1/messages/batches/([\w-]+)/cancel", path):
                batch = state.batches.get(m[1])
                if not batch:
                    return self._send(404, {})
                if batch["processing_status"] == "in_progress":
                    batch.update(processing_status="canceling",
                                 cancel_initiated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                state.log.append({"op": "cancel", "batch": m[1]})
                return self._send(200, self._public(batch))
            self._send(404, {"error": {"message": f"no route {path}"}})

    return Handler


def serve(port: int = 0, backend: str | None = None, step_s: float = 0.05) -> tuple[ThreadingHTTPServer, State]:
    """Start the server in a thread; (server, its state)."""
    state = State(backend, step_s)
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--backend", help="a chat completions server's base URL, e.g. http://127.0.0.1:8000/v1")
    args = parser.parse_args()
    server, _ = serve(args.port, args.backend)
    print(f"batch API server on http://127.0.0.1:{server.server_address[1]}/v1"
          + (f" -> {args.backend}" if args.backend else " (canned answers)"), flush=True)
    threading.Event().wait()
