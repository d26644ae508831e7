"""What does turning off llama.cpp's extra weight buffers cost? (curate turns them off where the build has AMX
kernels, whose matrix multiply segfaults: see curate.engines.llama_cpp.avoid_amx_repack.)

The embedded engine (its Q4_1 model, and the same weights requantized to Q4_0, the type llama.cpp's CPU
repacking does support) answers 16 MT-Bench prompts x 64 tokens, each configuration in a process of its own:
  - extra buffers on / off on a CPU *without* AMX: emulated on any x86-64 Linux machine by refusing the
    arch_prctl(ARCH_REQ_XCOMP_PERM) call with a seccomp filter, the same refusal a kernel or hypervisor without
    AMX support gives; ggml then leaves its AMX buffers out and keeps its other repacking (CPU_REPACK);
  - on this CPU as it is: curate's setting, and llama.cpp's default (with AMX in the build, it crashes).
Prints prompt+generated tokens/s and the ratio to llama.cpp's default on the CPU without AMX.

    python benchmarks/llama_repack.py [--prompts 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, print_table


def refuse_amx() -> None:
    """A seccomp filter that answers EPERM to arch_prctl(ARCH_REQ_XCOMP_PERM, ...) (x86-64 Linux only)."""
    import ctypes

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    ld_abs, jeq, ret = 0x20, 0x15, 0x06
    arch_prctl, req_xcomp_perm, eperm = 158, 0x1023, 1
    prog = (Filter * 6)(
        Filter(ld_abs, 0, 0, 0),  # seccomp_data.nr
        Filter(jeq, 0, 3, arch_prctl),
        Filter(ld_abs, 0, 0, 16),  # seccomp_data.args[0], low half
        Filter(jeq, 0, 1, req_xcomp_perm),
        Filter(ret, 0, 0, 0x00050000 | eperm),  # SECCOMP_RET_ERRNO
        Filter(ret, 0, 0, 0x7FFF0000),  # SECCOMP_RET_ALLOW
    )
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(Prog(len(prog), prog)), 0, 0):
        raise OSError(ctypes.get_errno(), "seccomp filter refused")


def child(model: str, prompts: int, max_tokens: int) -> None:
    """One configuration (set by the parent's environment): load, answer, print one JSON line."""
    if os.environ.get("BENCH_REFUSE_AMX"):
        refuse_amx()
    from curate.engines.base import Request, Sampling
    from curate.engines.llama_cpp import LlamaCppEngine

    texts = [json.loads(line)["turns"][0] for line in
             (ROOT / "pipelines/examples/data/mt_bench_questions.jsonl").read_text().splitlines()[:prompts]]
    reqs = [Request([{"role": "user", "content": t}], Sampling(temperature=0.8, max_tokens=max_tokens, seed=7))
            for t in texts]
    engine = LlamaCppEngine(model)
    engine.complete(reqs[:1])  # warm-up: first-touch of the weights
    start = time.perf_counter()
    out = engine.complete(reqs)
    secs = time.perf_counter() - start
    print(json.dumps({"tokens": sum(c.prompt_tokens + c.completion_tokens for c in out), "seconds": secs,
                      "errors": sum(c.error is not None for c in out)}))


def requantize(src: Path, dst: Path) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise RuntimeError("quantization failed")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--child", nargs=1)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.prompts, args.max_tokens)
    from curate.engines.llama_cpp import amx_in_build, embedded_model_path

    import llama_cpp.llama_cpp as lib

    amx = amx_in_build(lib) and "amx_int8" in Path("/proc/cpuinfo").read_text()
    emulate = platform.machine() == "x86_64" and sys.platform.startswith("linux")
    tmp = Path(tempfile.mkdtemp())
    q4_0 = tmp / "SmolLM2-135M-Instruct.Q4_0.gguf"
    requantize(embedded_model_path(), q4_0)
    configs = []
    for label, model in (("Q4_1 (embedded)", str(embedded_model_path())), ("Q4_0", str(q4_0))):
        if emulate:
            configs += [(label, "no AMX: extra buffers on (llama.cpp's default)", model, {"BENCH_REFUSE_AMX": "1",
                                                                                          "CURATE_LLAMA_EXTRA_BUFTS": "on"}),
                        (label, "no AMX: extra buffers off", model, {"BENCH_REFUSE_AMX": "1",
                                                                     "CURATE_LLAMA_EXTRA_BUFTS": "off"})]
        configs += [(label, f"this CPU{' (AMX)' if amx else ''}: curate's setting", model, {}),
                    (label, f"this CPU{' (AMX)' if amx else ''}: extra buffers on", model,
                     {"CURATE_LLAMA_EXTRA_BUFTS": "on"})]
    rows, base = [], {}
    for label, name, model, env in configs:
        res = subprocess.run([sys.executable, __file__, "--child", model, "--prompts", str(args.prompts),
                              "--max-tokens", str(args.max_tokens)], env={**os.environ, **env},
                             capture_output=True, text=True)
        if res.returncode < 0:
            rows.append([label, name, f"died: {signal.Signals(-res.returncode).name}", "-", "-"])
            continue
        if res.returncode:
            rows.append([label, name, f"failed: {(res.stderr.strip().splitlines() or ['?'])[-1][:60]}", "-", "-"])
            continue
        got = json.loads(res.stdout.strip().splitlines()[-1])
        rate = got["tokens"] / got["seconds"]
        base.setdefault(label, rate)
        rows.append([label, name, f"{got['seconds']:.1f} s", f"{rate:.0f}", f"{rate / base[label]:.2f}"])
    print_table(f"llama.cpp extra weight buffers ({args.prompts} prompts x {args.max_tokens} tokens; ratio to the "
                "first row of each model)", ["model", "configuration", "time", "tokens/s", "ratio"], rows)


if __name__ == "__main__":
    main()
