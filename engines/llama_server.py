"""llama-cpp-python's OpenAI-compatible server, started so that it runs on every CPU: `python -m
curate.engines.llama_server --model FILE.gguf --port P` takes the same arguments as `python -m llama_cpp.server`.

It first applies the embedded engine's load setting (`curate.engines.llama_cpp.avoid_amx_repack`): the plain
server segfaults on its first real prompt on CPUs with AMX. Use it to serve the embedded model (or any GGUF) to
an `openai_http` engine on one machine.
"""

from __future__ import annotations


def main() -> None:
    from llama_cpp.server.__main__ import main as serve

    from curate.engines.llama_cpp import avoid_amx_repack

    avoid_amx_repack()
    serve()


if __name__ == "__main__":
    main()
