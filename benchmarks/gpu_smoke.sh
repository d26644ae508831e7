#!/usr/bin/env bash
# GPU smoke: curate's GPU engines on a bare GPU machine (torch + transformers; vLLM too when installed), with
# the embedded SmolLM2-135M (or any model). Converts a GGUF to a Hugging Face folder when given one, then runs
# benchmarks/gpu_smoke.py: generation through curate's engine vs the library called directly, reproducibility
# under batching, and the judge's parse rate.
#   bash benchmarks/gpu_smoke.sh MODEL_FOLDER_OR_GGUF [gpu_smoke.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: gpu_smoke.sh MODEL_FOLDER_OR_GGUF [options]}
shift
if [ -f "$MODEL" ]; then
  OUTDIR=${HF_DIR:-/tmp/curate-gpu-smoke/model}
  python3 benchmarks/gguf_to_hf.py "$OUTDIR" "$MODEL"
  MODEL=$OUTDIR
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 python3 benchmarks/gpu_smoke.py --model "$MODEL" "$@"
