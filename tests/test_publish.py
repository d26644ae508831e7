"""Publishing to the Hub, against a local server that speaks the Hub HTTP API to the real `huggingface_hub`
client: a round trip through `datasets.load_dataset`, a card that parses with the real numbers, republishing
that changes nothing, a 500 mid-push that leaves the repo as it was, and a token that appears nowhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import EXAMPLES, curate, free_port
from hub_server import HubServer
from test_end_to_end import small_example

TOKEN = "hf_test_7d1e9c_do_not_leak"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("publish")
    path = small_example(tmp)
    data = yaml.safe_load(path.read_text())
    data["stages"][0]["load"]["limit"] = 3
    data["stages"][3]["pairs"]["min_margin"] = 0
    data["stages"][3]["pairs"]["ties"] = "keep"  # every prompt makes a pair: the round trip has rows
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    res = curate("run", path, "--run-dir", tmp / "run")
    assert res.returncode == 0, res.stdout + res.stderr
    return tmp / "run"


@pytest.fixture
def hub(tmp_path):
    server = HubServer(free_port())
    env = {"HF_ENDPOINT": server.endpoint, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_DATASETS_CACHE": str(tmp_path / "dsc"),
           "HF_HUB_OFFLINE": None, "HF_DATASETS_OFFLINE": None}
    yield server, env
    server.close()


def load_back(env: dict, tmp_path: Path) -> list[dict]:
    """Read the dataset back through the same endpoint, in a fresh process (the libraries read HF_* at import)."""
    code = ("import datasets, json; ds = datasets.load_dataset('acme/prefs', 'preference', split='train'); "
            "print(json.dumps(ds.to_list()))")
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_publish_round_trip_card_idempotence_and_no_token(finished_run, hub, tmp_path):
    server, env = hub
    res = curate("publish", finished_run, "--repo", "acme/prefs", "--license", "apache-2.0", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    repo = server.state.repos["acme/prefs"]
    commits = len(repo.commits)
    assert "README.md" in repo.files and any(p.startswith("data/preference/") for p in repo.files)
    # the token went in the Authorization header...
    assert any(h.get("authorization") == f"Bearer {TOKEN}" or h.get("Authorization") == f"Bearer {TOKEN}"
               for _, _, h in server.state.requests)

    rows = load_back(env, tmp_path)
    local = pq.read_table(finished_run / "05_export").to_pylist()
    key = lambda r: (r["prompt_id"], r["chosen_id"])  # noqa: E731
    assert sorted(rows, key=key) == sorted(local, key=key) and rows

    from huggingface_hub import DatasetCard

    card = DatasetCard(repo.files["README.md"].decode())
    assert card.data.license == "apache-2.0"
    assert card.data.configs[0]["config_name"] == "preference"
    manifest = json.loads((finished_run / "manifest.json").read_text())
    text = card.text
    # the card lists exactly the exported columns, each filled by some stage
    exported = pq.read_table(finished_run / "05_export")
    assert "## Columns of `preference`" in text
    for col in exported.column_names:
        assert f"| `{col}` |" in text
        assert exported[col].null_count < exported.num_rows, col
    assert "`rationale`" not in text and "`ref_margin`" not in text
    assert "## Row accounting" in text and "## Judges" in text and "mt_bench_single_v1" in text
    for s in manifest["stages"]:  # the card carries the run's real numbers
        assert f"| {s['id']} | {s['in']} | {s['out']} | {s['dropped']} | {s['quarantined']} | {s['rows_out']} |" in text
    assert 'load_dataset("acme/prefs", "preference"' in text and "DPOTrainer" in text

    again = curate("publish", finished_run, "--repo", "acme/prefs", "--license", "apache-2.0", env=env)
    assert again.returncode == 0, again.stderr
    assert len(repo.commits) == commits, "the same run again makes no new commit"

    # ...and appears nowhere else: not in the outputs, the card, or any file of the run
    assert TOKEN not in res.stdout + res.stderr + again.stdout + again.stderr
    assert all(TOKEN.encode() not in data for data in repo.files.values())
    for f in finished_run.rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f


def test_a_500_mid_push_fails_clearly_and_leaves_the_repo_consistent(finished_run, hub):
    server, env = hub
    server.state.fail_commits = 10  # the client's own retries cannot get through
    res = curate("publish", finished_run, "--repo", "acme/prefs", env=env)
    assert res.returncode == 1
    assert "publish failed" in res.stderr and "nothing was committed" in res.stderr
    repo = server.state.repos["acme/prefs"]
    assert repo.files == {} and len(repo.commits) == 1  # created, never half-written
    server.state.fail_commits = 0
    ok = curate("publish", finished_run, "--repo", "acme/prefs", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "README.md" in repo.files and len(repo.commits) == 2


def test_a_pipeline_with_a_publish_block_ends_by_publishing(finished_run, hub, tmp_path):
    server, env = hub
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["publish"] = {"repo": "acme/nightly", "license": "mit"}
    pipeline = tmp_path / "nightly.yaml"
    pipeline.write_text(yaml.safe_dump(config, sort_keys=False))
    res = curate("run", pipeline, "--run-dir", tmp_path / "run", env=env)  # every model call is a cache hit
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["published"]["repo"] == "acme/nightly"
    repo = server.state.repos["acme/nightly"]
    assert manifest["published"]["commit"] == repo.sha and "README.md" in repo.files
    assert "published" in res.stdout


def test_an_unreachable_hub_is_one_line_with_the_cause_and_the_remedy(finished_run, tmp_path):
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": None}
    res = curate("publish", finished_run, "--repo", "acme/prefs", env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) <= 2 and "Traceback" not in res.stderr, res.stderr  # one line (rich may wrap it)
    assert "cannot reach the Hub at http://127.0.0.1:" in res.stderr and "curate publish" in res.stderr
    assert TOKEN not in res.stdout + res.stderr


def test_publish_refuses_a_part_changed_after_the_run(finished_run, hub, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    export = [s for s in manifest["stages"] if s["stage"] == "export"][-1]
    part = run / export["id"] / f"{sorted(export['shard_sha256'])[0]}.parquet"
    table = pq.read_table(part)
    pq.write_table(table.slice(0, max(0, table.num_rows - 1)), part)  # a row removed by hand
    server, env = hub
    res = curate("publish", run, "--repo", "acme/changed", env=env)
    assert res.returncode == 1 and "was changed after the run" in res.stderr, res.stdout + res.stderr
    assert "acme/changed" not in server.state.repos  # checked before anything was sent


def test_an_image_pair_dataset_publishes_with_its_images(hub, tmp_path):
    """A diffusion export (images embedded) goes to the Hub and loads back with the Image feature, bytes intact."""
    import hashlib

    import pyarrow as pa
    from PIL import Image

    server, env = hub
    pngs = []
    for k, color in enumerate(("red", "blue", "green")):
        Image.new("RGB", (32, 32), color).save(tmp_path / f"{k}.png")
        pngs.append((tmp_path / f"{k}.png").read_bytes())
    pq.write_table(pa.table({"caption": ["a red square", "a green square"], "jpg_0": [pngs[0], pngs[1]],
                             "jpg_1": [pngs[1], pngs[2]], "label_0": [1.0, 0.0]}), tmp_path / "pick.parquet")
    spec = tmp_path / "img.yaml"
    spec.write_text(yaml.safe_dump({"name": "img", "stages": [
        {"load": {"path": str(tmp_path / "pick.parquet"), "images": {"layout": "pick_a_pic"}}},
        {"pairs": {"label_key": "human_chosen"}},
        {"export": {"format": "diffusion"}}]}))
    res = curate("run", spec, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = curate("publish", tmp_path / "run", "--repo", "acme/images", "--license", "apache-2.0", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    card = server.state.repos["acme/images"].files["README.md"].decode()
    assert "text-to-image" in card and "`jpg_0`" in card and "diffusion" in card
    code = ("import datasets, hashlib, json; ds = datasets.load_dataset('acme/images', 'diffusion', split='train');"
            "ds = ds.cast_column('jpg_0', datasets.Image(decode=False)); "
            "print(json.dumps({'image': type(datasets.load_dataset('acme/images', 'diffusion', split='train')"
            ".features['jpg_0']).__name__, 'chosen': {r['caption']: hashlib.sha256(r['jpg_0']['bytes']).hexdigest() "
            "for r in ds}}))")
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["image"] == "Image"
    assert got["chosen"] == {"a red square": hashlib.sha256(pngs[0]).hexdigest(),
                             "a green square": hashlib.sha256(pngs[2]).hexdigest()}


def test_a_hub_dataset_loads_by_name_in_its_layout(hub, tmp_path):
    """`load: {hf: ORG/NAME, layout: trl}`: a preference dataset on the Hub (here the local Hub-protocol server at
    HF_ENDPOINT) is streamed by name, split and revision, and gives the same pairs as its file read locally."""
    server, env = hub
    part = EXAMPLES / "data" / "curate_hh_export" / "part-00000.parquet"
    code = ("import sys, huggingface_hub as h; api = h.HfApi(); api.create_repo('acme/hh-pairs', repo_type='dataset'); "
            "api.upload_file(path_or_fileobj=sys.argv[1], path_in_repo='data/train-00000-of-00001.parquet', "
            "repo_id='acme/hh-pairs', repo_type='dataset')")
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    up = subprocess.run([sys.executable, "-c", code, str(part)], capture_output=True, text=True, env=full, timeout=300)
    assert up.returncode == 0, up.stderr[-3000:]
    outs = []
    for name, load in (("hub", {"hf": "acme/hh-pairs", "split": "train", "layout": "trl", "source": "hh"}),
                       ("file", {"path": str(part), "layout": "trl", "source": "hh"})):
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({"name": name, "stages": [{"load": load}, {"pairs": {}},
                                                                 {"export": {"format": "trl", "conversational": True}}]}))
        res = curate("run", spec, "--run-dir", tmp_path / name, env=env)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        outs.append(pq.read_table(tmp_path / name / "03_export").to_pylist())
    assert len(outs[0]) == 40 and outs[0] == outs[1]
