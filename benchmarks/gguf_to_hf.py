"""Convert the embedded SmolLM2-135M GGUF into a Hugging Face model folder (safetensors + tokenizer with its
chat template), for engines that cannot read GGUF (vLLM, transformers). Needs `transformers` and `gguf`.

    python benchmarks/gguf_to_hf.py OUT_DIR [GGUF_FILE]     (default: the embedded model)
"""

from __future__ import annotations

import sys
from pathlib import Path



def convert(out: Path, gguf: Path | None = None) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.engines.llama_cpp import embedded_model_path

    if (out / "config.json").exists():
        return out
    gguf = gguf or embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # dequantized on load; save plain weights, with no quantization in the config
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None))
