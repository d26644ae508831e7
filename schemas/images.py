"""Images in rows: a candidate (or a pair side) that is an image carries an `IMAGE` struct, the file's path (as
the source named it, resolved against the load stage's folder) or its bytes (Parquet sources such as Pick-a-Pic
hold JPEG bytes), and always the sha256 of the bytes, so a changed file is a changed image.

Images are opened with Pillow when they are loaded: a missing or unreadable file is the row's quarantine reason,
never a row with a hole in it. Bytes are passed on as they are (never re-encoded).
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Any

import pyarrow as pa

IMAGE = pa.struct([("path", pa.string()), ("sha256", pa.string()), ("bytes", pa.binary())])

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}


def _check(data: bytes) -> str:
    """The image's format (PNG, JPEG, ...); raises when Pillow cannot read it."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.verify()
        return im.format or "unknown"


def image_ref(value: Any, folder: Path | None, allowed: list[Path] | None = None) -> tuple[dict | None, str | None]:
    """A source's image (a path, raw bytes, or a `datasets` Image dict {bytes, path}) -> (IMAGE row, None) or
    (None, why it is unusable).

    Reads stay inside the data: a relative path is resolved inside `folder` (symbolic links followed) and refused
    when it leaves it; an absolute path is refused unless it lies under one of the `allowed` roots. A dataset from
    someone else could otherwise name any image on the user's disk, and the export and the Hub would carry it."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        data, path = bytes(value), None
    elif isinstance(value, str) and value.strip():
        p = Path(value).expanduser()
        roots = [Path(r).resolve() for r in (allowed or [])]
        if p.is_absolute():
            if not any(p.resolve().is_relative_to(r) for r in roots):
                return None, (f"image {value!r} is an absolute path outside the data: refused (allow it with "
                              "`images: {allowed_roots: [...]}`)")
        elif folder is not None:
            p = folder / p
            inside = [Path(folder).resolve(), *roots]
            if not any(p.resolve().is_relative_to(r) for r in inside):
                return None, f"image {value!r} leaves the data folder {folder}: refused"
        try:
            data = p.read_bytes()
        except OSError as exc:
            return None, f"image {value!r} cannot be read: {exc.strerror or exc}"
        path = str(p.resolve())
    else:
        return None, f"image is {type(value).__name__}, not a path or bytes"
    try:
        _check(data)
    except Exception as exc:  # Pillow raises several kinds for a file that is not an image
        from PIL import UnidentifiedImageError

        why = "Pillow recognizes no image format in it" if isinstance(exc, UnidentifiedImageError) else str(exc)
        return None, f"image {path or '(bytes)'} is not a readable image: {why}"
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "bytes": None if path else data}, None


def image_bytes(ref: dict) -> bytes:
    """The image's bytes, checked against its sha256 (a file edited after loading is an error, not a swap)."""
    data = ref["bytes"] if ref.get("bytes") is not None else Path(ref["path"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise ValueError(f"image {ref.get('path') or '(bytes)'} changed since it was loaded (sha256 differs)")
    return data


def data_url(ref: dict) -> str:
    """The image as a base64 data URL, the form OpenAI-compatible servers (vLLM, llama.cpp) accept."""
    data = image_bytes(ref)
    mime = _MIME.get(_check(data), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def suffix(ref: dict) -> str:
    """A file suffix for the image's format (.png, .jpg, ...)."""
    return {"JPEG": ".jpg"}.get(fmt := _check(image_bytes(ref)), f".{fmt.lower()}")
