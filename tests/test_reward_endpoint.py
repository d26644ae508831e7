"""A served reward model, as vLLM serves one (`vllm serve <reward model>`: `POST /classify` with chat messages).
No reward model server runs on these machines, so a local server speaks the protocol: it records each request
and scores a response by a fixed formula (its canned scores are not a reward model's quality). The run sends each
candidate as the last assistant turn, retries a 500, turns the answers into ordinary judgments, and a dead
endpoint fails the run."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler

import pyarrow.parquet as pq
import yaml

from conftest import EXAMPLES, accounted, curate, free_port, send_json, serve_local


def canned(text: str) -> float:
    return 1 / (1 + math.exp(-(len(text) % 97) / 10))


class Classify:
    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        me = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with me.lock:
                    me.requests.append((self.path, body))
                    first = len(me.requests) == 1
                if first:
                    send_json(self, b'{"error": "warming up"}', status=500)
                    return
                reply = {"data": [{"index": 0, "label": "LABEL_0", "num_classes": 1,
                                   "probs": [canned(body["messages"][-1]["content"])]}]}
                send_json(self, json.dumps(reply).encode())

        self.server, url = serve_local(Handler)
        self.url = url.removesuffix("/v1")


def pipeline(tmp_path, base_url: str):
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join((EXAMPLES / "data" / "hh_rlhf_harmless_40.jsonl").read_text().splitlines()[:4]) + "\n")
    spec = tmp_path / "served_rm.yaml"
    spec.write_text(yaml.safe_dump({"name": "served_rm", "stages": [
        {"load": {"path": str(data), "transcripts": {"chosen": "chosen", "rejected": "rejected"}}},
        {"reward_model": {"endpoint": {"base_url": base_url, "model": "Skywork/Skywork-Reward-V2-Qwen3-0.6B",
                                       "concurrency": 4}}},
        {"pairs": {"judge_kind": "reward_model", "min_margin": 0, "ties": "keep"}},
        {"export": {"format": "trl"}}]}))
    return spec


def test_a_served_reward_model_scores_every_candidate_through_classify(tmp_path):
    server = Classify()
    try:
        res = curate("run", pipeline(tmp_path, server.url), "--run-dir", tmp_path / "run")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        m = accounted(tmp_path / "run")
        assert len(server.requests) == 8 + 1  # 4 transcripts x 2 candidates, and the 500 asked again
        for path, body in server.requests:
            assert path == "/classify" and body["model"] == "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
            assert body["messages"][-1]["role"] == "assistant" and body["messages"][0]["role"] == "user"
        rows = pq.read_table(tmp_path / "run" / m["stages"][1]["id"]).to_pylist()
        for row in rows:
            for cand in row["candidates"]:
                (j,) = cand["judgments"]
                assert j["kind"] == "reward_model" and j["judge"] == "Skywork-Reward-V2-Qwen3-0.6B:reward_model"
                assert j["score"] == canned(cand["response"])  # the server's number, as it sent it
        summary = m["stages"][1]["summary"]
        assert summary["human_pairs"] == 4 and summary["chance"] == 0.5
        assert m["stages"][2]["out"] == 4  # a pair per transcript, chosen by the served scores
        assert (m["stages"][1]["model_calls"], m["stages"][1]["cache_hits"]) == (8, 0)
        # a rerun into a new run directory: every score comes from the response cache, the server is not asked
        res = curate("run", pipeline(tmp_path, server.url), "--run-dir", tmp_path / "again")
        assert res.returncode == 0, res.stderr[-3000:]
        again = accounted(tmp_path / "again")
        assert (again["stages"][1]["model_calls"], again["stages"][1]["cache_hits"]) == (0, 8)
        assert len(server.requests) == 9
        assert pq.read_table(tmp_path / "again" / again["stages"][1]["id"]).to_pylist() == rows
    finally:
        server.server.shutdown()


def test_a_dead_reward_model_endpoint_is_a_failed_run(tmp_path):
    res = curate("run", pipeline(tmp_path, f"http://127.0.0.1:{free_port()}"), "--run-dir", tmp_path / "run")
    assert res.returncode == 1
    assert "reward model endpoint" in res.stderr and "ConnectError" in res.stderr
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"
