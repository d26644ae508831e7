"""A local OpenAI-compatible chat-completions server whose replies take a seeded lognormal time, for throughput
benchmarks of clients (its answers are canned text: never a quality signal).

Each request's delay is drawn from a generator seeded by a hash of its body, so every client sees the same delay
for the same request whatever the order it sends them in. The server keeps a time-weighted mean of the requests
in flight while it is busy: GET /stats returns it with the request and connection counts; POST /reset zeroes them.

With --limit N it takes at most N requests at once, as a rate-limited API tier does: one that arrives while N
are being served gets 429 with `Retry-After: 0` (counted as `throttled` in /stats).

    python benchmarks/latency_server.py --port 8000 [--median 0.4 --sigma 0.8 --cap 8] [--instant] [--limit N]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import time


class Stats:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.area = 0.0  # integral of in-flight over busy time
        self.busy = 0.0
        self.stamp = time.monotonic()
        self.connections = 0
        self.throttled = 0

    def tick(self, delta: int) -> None:
        now = time.monotonic()
        if self.in_flight:
            self.area += self.in_flight * (now - self.stamp)
            self.busy += now - self.stamp
        self.stamp = now
        self.in_flight += delta

    def as_dict(self) -> dict:
        self.tick(0)
        return {"requests": self.requests, "connections": self.connections, "throttled": self.throttled,
                "mean_in_flight": self.area / self.busy if self.busy else 0.0}


def make_app(median: float, sigma: float, cap: float, instant: bool, limit: int | None = None):
    stats = Stats()

    async def read_body(receive) -> bytes:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                return body

    async def send_json(send, status: int, data: dict) -> None:
        payload = json.dumps(data).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path, method = scope["path"], scope["method"]
        if path == "/stats":
            await send_json(send, 200, stats.as_dict())
            return
        if path == "/reset":
            stats.reset()
            await send_json(send, 200, {"ok": True})
            return
        if path.endswith("/models"):
            await send_json(send, 200, {"data": [{"id": "bench", "object": "model"}]})
            return
        if not path.endswith("/chat/completions") or method != "POST":
            await send_json(send, 404, {"error": {"message": "not found"}})
            return
        body = await read_body(receive)
        if limit is not None and stats.in_flight >= limit:
            stats.throttled += 1
            payload = b'{"error": {"message": "rate limit: too many requests in flight", "type": "rate_limit"}}'
            await send({"type": "http.response.start", "status": 429,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"0"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        stats.requests += 1
        stats.tick(+1)
        try:
            req = json.loads(body)
            # the delay depends on the conversation only, so clients that add other fields see the same delays
            seed = int.from_bytes(hashlib.sha256(json.dumps(req.get("messages")).encode()).digest()[:8], "big")
            delay = 0.0 if instant else min(cap, random.Random(seed).lognormvariate(math.log(median), sigma))
            if delay:
                await asyncio.sleep(delay)
            n = min(int(req.get("max_tokens") or 16), 16)
            text = " ".join(["word"] * n)
            await send_json(send, 200, {
                "id": f"cmpl-{seed:x}", "object": "chat.completion", "model": req.get("model", "bench"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}})
        finally:
            stats.tick(-1)

    app.stats = stats
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--median", type=float, default=0.4)
    ap.add_argument("--sigma", type=float, default=0.8)
    ap.add_argument("--cap", type=float, default=8.0)
    ap.add_argument("--instant", action="store_true")
    ap.add_argument("--limit", type=int, help="answer 429 beyond this many requests in flight")
    args = ap.parse_args()
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    app = make_app(args.median, args.sigma, args.cap, args.instant, args.limit)

    class Counting(H11Protocol):
        def connection_made(self, transport):
            app.stats.connections += 1
            super().connection_made(transport)

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", http=Counting, lifespan="on",
                backlog=4096, timeout_keep_alive=120)


if __name__ == "__main__":
    main()
