"""Check a smoke run (vllm_cpu_smoke.sh, ray_llm_cpu_smoke.sh): it finished, every stage's rows add up, and every
grammar-constrained judgment parsed. Prints each stage's calls and seconds.

    python benchmarks/check_smoke_run.py RUN_DIR NAME
"""

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

run, name = Path(sys.argv[1]), sys.argv[2]
m = json.loads((run / "manifest.json").read_text())
assert m["status"] == "ok", m.get("error")
for s in m["stages"]:
    assert s["in"] == s["out"] + s["dropped"] + s["quarantined"], s
    print(f"{s['stage']}: in {s['in']} out {s['out']} calls {s['model_calls']} {s['seconds']:.1f} s")
judged = pq.read_table(run / "03_judge").to_pylist()
js = [j for r in judged for c in r["candidates"] for j in c["judgments"]]
ok = sum(j["parse_ok"] for j in js)
print(f"judgments: {len(js)}, parsed {ok} (vLLM structured output with the template's grammar)")
assert js and ok == len(js), "a grammar-constrained judgment did not parse"
print(f"{name}: ok")
