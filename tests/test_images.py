"""Image preference pairs, as a user builds DCPO data: real PNG files drawn here with Pillow, in the Pick-a-Pic and
ImageReward layouts, through `curate run` (load -> pairs -> caption -> diffusion export), read back with
`datasets` (Image feature). The vision-language path runs against a local OpenAI-compatible server that records
each request and answers each image with a canned caption: no VLM runs on these machines, so this tests the
protocol (images as content parts, retries, the cache keyed on image bytes), never caption quality."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import accounted, curate, send_json, serve_local

SHAPES = [("a red circle on white", "red", "blue"), ("a green square on white", "green", "yellow"),
          ("a black star on white", "black", "gray"), ("two orange dots", "orange", "purple")]


def draw(path: Path, color: str, label: str) -> Path:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (64, 64), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((8, 8, 56, 56), fill=color)
    d.text((2, 2), label, fill="black")
    im.save(path)
    return path


def pick_a_pic(folder: Path) -> Path:
    """Four good pairs (one a tie), one with a missing image, one whose 'image' is text."""
    (folder / "images").mkdir()
    recs = []
    for i, (caption, a, b) in enumerate(SHAPES):
        draw(folder / "images" / f"{i}_0.png", a, f"{i}a")
        draw(folder / "images" / f"{i}_1.png", b, f"{i}b")
        recs.append({"caption": caption, "jpg_0": f"{i}_0.png", "jpg_1": f"{i}_1.png",
                     "label_0": [1, 0, 1, 0.5][i], "model_0": "sdxl", "model_1": "sd15"})
    (folder / "images" / "notes.png").write_text("not an image")
    recs += [{"caption": "a lost picture", "jpg_0": "gone.png", "jpg_1": "0_0.png", "label_0": 1},
             {"caption": "a broken picture", "jpg_0": "notes.png", "jpg_1": "0_0.png", "label_0": 1}]
    data = folder / "pick.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return data


def load_export(folder: Path):
    import datasets

    return datasets.load_dataset("parquet", data_dir=str(folder), split="train")


def test_dcpo_pairs_with_perturbed_captions_from_image_files(tmp_path):
    data = pick_a_pic(tmp_path)
    spec = tmp_path / "dcpo.yaml"
    spec.write_text(yaml.safe_dump({"name": "dcpo", "cache_dir": str(tmp_path / "cache"), "stages": [
        {"load": {"path": str(data), "images": {"layout": "pick_a_pic", "folder": "images"}}},
        {"pairs": {"label_key": "human_chosen"}},
        {"caption": {"method": "perturb", "level": "strong", "sampling": {"temperature": 0.7, "max_tokens": 48}}},
        {"export": {"format": "diffusion"}}]}))
    res = curate("run", spec, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = accounted(tmp_path / "run")
    load, pairs, caption, export = m["stages"]
    assert (load["in"], load["out"], load["quarantined"]) == (6, 4, 2)
    reasons = [r["reason"] for r in pq.read_table(tmp_path / "run" / "_quarantined" / "01_load").to_pylist()]
    assert any("gone.png" in r and "cannot be read" in r for r in reasons), reasons
    assert any("notes.png" in r and "not a readable image" in r for r in reasons), reasons
    assert pairs["out"] == 3 and pairs["quarantined"] + pairs["dropped"] == 1  # the tie has no human choice

    ds = load_export(tmp_path / "run" / export["id"])
    assert ds.num_rows == caption["out"] == 3 - caption["dropped"]
    assert ds.features["jpg_0"].__class__.__name__ == "Image"
    for row in ds:
        i = next(n for n, (c, _, _) in enumerate(SHAPES) if c == row["caption"])
        preferred = [1, 0, 1][i]  # label_0 1: image 0 preferred; 0: image 1
        want = (tmp_path / "images" / f"{i}_{1 - preferred}.png")
        assert row["jpg_0"].size == (64, 64) and row["label_0"] == 1.0
        from PIL import Image

        assert row["jpg_0"].convert("RGB").tobytes() == Image.open(want).convert("RGB").tobytes()  # the human's pick
        assert row["caption_0"] == row["caption"]  # the preferred image keeps the prompt
        assert row["caption_1"] and row["caption_1"].strip().casefold() != row["caption"].casefold()


def test_image_reward_layout_on_its_real_rankings_exports_without_captions(tmp_path, copy_data):
    """ImageReward's own test set (prompts, generation paths, human rankings; its images are not published with
    it): stand-in images are drawn at the paths of the first three prompts' generations."""
    data = copy_data("imagereward/test.json")
    records = json.loads(data.read_text())[:3]
    for r, rec in enumerate(records):
        for k, rel in enumerate(rec["generations"]):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            draw(tmp_path / rel, ["red", "blue", "green", "gray"][k], f"{r}{k}")
    spec = tmp_path / "ir.yaml"
    spec.write_text(yaml.safe_dump({"name": "ir", "stages": [
        {"load": {"path": str(data), "images": {"layout": "image_reward"}, "limit": 3}},
        {"pairs": {"label_key": "human_chosen"}},
        {"export": {"format": "diffusion"}}]}))
    res = curate("run", spec, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = accounted(tmp_path / "run")
    assert (m["stages"][0]["out"], m["stages"][0]["quarantined"]) == (3, 0)
    ds = load_export(tmp_path / "run" / m["stages"][-1]["id"])
    assert "caption_0" not in ds.column_names  # no caption stage ran: no caption columns
    assert ds.num_rows == sum(len(rec["generations"]) - 1 for rec in records)  # the best against each other one
    from PIL import Image

    for row in ds:
        rec = next(rec for rec in records if rec["prompt"] == row["caption"])
        best = rec["generations"][rec["ranking"].index(min(rec["ranking"]))]  # rank 1 is the best
        assert row["jpg_0"].convert("RGB").tobytes() == Image.open(tmp_path / best).convert("RGB").tobytes()


def test_pick_a_pic_parquet_with_embedded_bytes_keeps_them_exactly(tmp_path):
    """Pick-a-Pic ships its images as bytes inside Parquet: they go to the export unchanged."""
    import pyarrow as pa

    pngs = [draw(tmp_path / f"{k}.png", c, str(k)).read_bytes() for k, c in enumerate(("red", "blue", "green"))]
    table = pa.table({"caption": ["a red dot", "a green dot"], "jpg_0": [pngs[0], pngs[1]],
                      "jpg_1": [pngs[1], pngs[2]], "label_0": [1.0, 0.0]})
    pq.write_table(table, tmp_path / "pick.parquet")
    spec = tmp_path / "pp.yaml"
    spec.write_text(yaml.safe_dump({"name": "pp", "stages": [
        {"load": {"path": str(tmp_path / "pick.parquet"), "images": {"layout": "pick_a_pic"}}},
        {"pairs": {"label_key": "human_chosen"}},
        {"export": {"format": "diffusion"}}]}))
    res = curate("run", spec, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = accounted(tmp_path / "run")
    from datasets import Image

    ds = load_export(tmp_path / "run" / m["stages"][-1]["id"]).cast_column("jpg_0", Image(decode=False))
    chosen = {row["caption"]: row["jpg_0"]["bytes"] for row in ds}
    assert chosen == {"a red dot": pngs[0], "a green dot": pngs[2]}  # label 1: jpg_0 preferred; 0: jpg_1


class VLM:
    """A local OpenAI-compatible server standing in for a vision-language model: it records each request,
    fails the first call once with a 500 (the client must retry), and answers each image with a canned
    caption named by the image's bytes."""

    def __init__(self):
        self.requests: list[dict] = []
        self.failed_once = False
        self.lock = threading.Lock()
        vlm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with vlm.lock:
                    vlm.requests.append(body)
                    fail = not vlm.failed_once
                    vlm.failed_once = True
                if fail:
                    send_json(self, b'{"error": {"message": "warming up"}}', status=500)
                    return
                parts = body["messages"][-1]["content"]
                urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
                digests = [hashlib.sha256(base64.b64decode(u.split(",", 1)[1])).hexdigest()[:8] for u in urls]
                system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
                if "image A" in system:  # a pairwise image judge: the image with the smaller digest wins
                    text = "A canned verdict.\n\n" + ("[[A]]" if digests[0] < digests[1] else "[[B]]")
                elif "Rating" in parts[0]["text"]:  # a pointwise image judge: a rating named by the bytes
                    text = f"A canned rating.\n\nRating: [[{1 + int(digests[0][:2], 16) % 10}]]"
                else:
                    text = f"canned caption {digests[0]}"
                reply = {"choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 3}}
                send_json(self, json.dumps(reply).encode())

        self.server, self.url = serve_local(Handler)


def test_vlm_captions_travel_as_content_parts_with_retries_and_an_image_keyed_cache(tmp_path):
    data = pick_a_pic(tmp_path)
    vlm = VLM()
    try:
        pipeline = {"name": "vlm", "cache_dir": str(tmp_path / "cache"),
                    "engines": {"vlm": {"kind": "openai_http", "base_url": vlm.url, "model": "qwen2.5-vl",
                                        "images": True, "backoff_base": 0.05}},
                    "stages": [{"load": {"path": str(data), "images": {"layout": "pick_a_pic", "folder": "images"}}},
                               {"pairs": {"label_key": "human_chosen"}},
                               {"caption": {"method": "caption", "engine": "vlm"}},
                               {"export": {"format": "diffusion"}}]}
        spec = tmp_path / "vlm.yaml"
        spec.write_text(yaml.safe_dump(pipeline))
        res = curate("run", spec, "--run-dir", tmp_path / "a")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        m = accounted(tmp_path / "a")
        assert m["stages"][2]["model_calls"] == 6  # two images per pair, three pairs
        assert len(vlm.requests) == 7  # and the one the server failed, asked again
        for body in vlm.requests:
            text, image = body["messages"][-1]["content"]
            assert text["type"] == "text" and image["type"] == "image_url"
            assert image["image_url"]["url"].startswith("data:image/png;base64,")
        sent = {base64.b64decode(b["messages"][-1]["content"][1]["image_url"]["url"].split(",", 1)[1])
                for b in vlm.requests}
        on_disk = {p.read_bytes() for p in (tmp_path / "images").glob("[0-2]_*.png")}
        assert sent == on_disk  # the exact bytes of each image of the three pairs, never re-encoded
        from datasets import Image

        ds = load_export(tmp_path / "a" / m["stages"][-1]["id"])
        ds = ds.cast_column("jpg_0", Image(decode=False)).cast_column("jpg_1", Image(decode=False))
        assert ds.num_rows == 3
        for row in ds:
            for col, img in (("caption_0", "jpg_0"), ("caption_1", "jpg_1")):
                digest = hashlib.sha256(row[img]["bytes"]).hexdigest()[:8]
                assert row[col] == f"canned caption {digest}"  # the server's caption of that very image

        # the cache is keyed on the image bytes: a rerun asks nothing; a redrawn image is asked again
        before = len(vlm.requests)
        res = curate("run", spec, "--run-dir", tmp_path / "b")
        assert res.returncode == 0 and len(vlm.requests) == before
        draw(tmp_path / "images" / "0_1.png", "cyan", "new")
        res = curate("run", spec, "--run-dir", tmp_path / "c")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert len(vlm.requests) == before + 1
    finally:
        vlm.server.shutdown()


def test_image_judges_send_both_orders_and_their_verdicts_make_the_pairs(tmp_path):
    data = pick_a_pic(tmp_path)
    vlm = VLM()
    vlm.failed_once = True  # no injected failure here
    try:
        spec = tmp_path / "judged.yaml"
        spec.write_text(yaml.safe_dump({"name": "judged", "cache_dir": str(tmp_path / "cache"),
                                        "engines": {"vlm": {"kind": "openai_http", "base_url": vlm.url,
                                                            "model": "qwen2.5-vl", "images": True}},
                                        "stages": [
            {"load": {"path": str(data), "images": {"layout": "pick_a_pic", "folder": "images"}}},
            {"judge": {"engine": "vlm", "template": "image_prompt_following"}},
            {"judge": {"engine": "vlm", "template": "image_pair_v1"}},
            {"pairs": {"judge_kind": "pairwise", "min_margin": 0.1}},
            {"export": {"format": "diffusion"}}]}))
        res = curate("run", spec, "--run-dir", tmp_path / "run")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        m = accounted(tmp_path / "run")
        assert m["stages"][1]["model_calls"] == 8 and m["stages"][2]["model_calls"] == 8  # 4 rows: 8 images, 4 pairs x 2
        pairwise = [b for b in vlm.requests if "image A" in b["messages"][0]["content"]]
        orders = {}
        for b in pairwise:
            urls = tuple(p["image_url"]["url"] for p in b["messages"][-1]["content"][1:])
            orders.setdefault(frozenset(urls), set()).add(urls)
        assert len(orders) == 4 and all(len(o) == 2 for o in orders.values())  # each pair shown in both orders
        rows = pq.read_table(tmp_path / "run" / m["stages"][2]["id"]).to_pylist()
        for row in rows:
            for cand in row["candidates"]:
                assert all(j["parse_ok"] for j in cand["judgments"]), cand["judgments"]
        from datasets import Image

        ds = load_export(tmp_path / "run" / m["stages"][-1]["id"])
        ds = ds.cast_column("jpg_0", Image(decode=False)).cast_column("jpg_1", Image(decode=False))
        assert ds.num_rows == 4  # the judge was position-consistent, so every pair has a winner
        for row in ds:  # the canned judge prefers the smaller digest: the export's chosen is that image
            a, b = (hashlib.sha256(row[c]["bytes"]).hexdigest()[:8] for c in ("jpg_0", "jpg_1"))
            assert a < b
    finally:
        vlm.server.shutdown()


@pytest.mark.parametrize("name", ["image_prompt_following", "image_aesthetics", "image_fidelity",
                                  "image_harmlessness", "image_pair_v1"])
def test_every_image_template_sends_its_images_and_parses_the_judges_answer(name, tmp_path):
    import pyarrow as pa

    from curate.engines.cache import ResponseCache
    from curate.engines.config import build_engine
    from curate.engines.openai_http import OpenAIHTTPConfig
    from curate.judges.templates import load_template, template_path
    from curate.schemas.images import image_ref
    from curate.schemas.records import PROMPT_ROW_WITH_CANDIDATES
    from curate.stages import judge
    from curate.stages.base import StageContext
    from curate.stages.load import image_candidate

    vlm = VLM()
    vlm.failed_once = True
    try:
        images = [image_ref(str(draw(tmp_path / f"{c}.png", c, c)), None, [tmp_path])[0] for c in ("red", "blue")]
        row = {"prompt_id": "p", "prompt": "a red circle", "messages": [{"role": "user", "content": "a red circle"}],
               "candidates": [image_candidate("p", i, im, None) for i, im in enumerate(images)]}
        engine = build_engine(OpenAIHTTPConfig(base_url=vlm.url, model="vlm", images=True),
                              ResponseCache(tmp_path / "cache"))
        res = judge.process(pa.Table.from_pylist([row], schema=PROMPT_ROW_WITH_CANDIDATES),
                            judge.Config(template=name, engine="vlm"), StageContext({"vlm": engine}))
        assert res.quarantined.num_rows == 0
        template = load_template(template_path(name))
        for cand in res.out.to_pylist()[0]["candidates"]:
            assert cand["judgments"] and all(j["parse_ok"] and j["score"] is not None for j in cand["judgments"])
            assert all(j["aspect"] == template.aspect for j in cand["judgments"])
        shown = [len([p for p in b["messages"][-1]["content"] if p["type"] == "image_url"]) for b in vlm.requests]
        assert shown == ([2, 2] if template.kind == "pairwise" else [1, 1])  # both orders, or one image a call
    finally:
        vlm.server.shutdown()


def test_captioning_on_an_engine_that_reads_no_images_fails_validation(tmp_path):
    data = pick_a_pic(tmp_path)
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad", "stages": [
        {"load": {"path": str(data), "images": {"layout": "pick_a_pic", "folder": "images"}}},
        {"pairs": {"label_key": "human_chosen"}},
        {"caption": {"method": "hybrid"}}]}))
    res = curate("validate", spec)
    assert res.returncode == 2
    assert "stages[2].caption.engine" in res.stderr and "images" in res.stderr
    spec.write_text(yaml.safe_dump({"name": "bad", "stages": [
        {"load": {"path": str(data), "images": {"layout": "pick_a_pic", "folder": "images"}}},
        {"judge": {"template": "image_pair_v1"}}]}))
    res = curate("validate", spec)
    assert res.returncode == 2 and "stages[1].judge.engine" in res.stderr and "images" in res.stderr
