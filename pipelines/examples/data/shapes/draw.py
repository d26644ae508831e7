"""Draws this folder's images and pick_a_pic.jsonl: synthetic image pairs in the Pick-a-Pic layout, for the
image examples (no image dataset ships its pictures small enough to copy here). Each caption names a shape and
a color; the preferred image (label_0 says which) is drawn as the caption says, the other one with another
color or shape. The labels are true by construction: they are not anyone's preference.

    python pipelines/examples/data/shapes/draw.py
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
PAIRS = [  # caption, (shape, color) of jpg_0, of jpg_1, label_0 (1: jpg_0 is drawn as captioned, 0: jpg_1 is)
    ("a red circle on a white background", ("circle", "red"), ("circle", "blue"), 1),
    ("a green square on a white background", ("square", "orange"), ("square", "green"), 0),
    ("a yellow triangle on a white background", ("triangle", "yellow"), ("circle", "yellow"), 1),
    ("a purple circle on a white background", ("square", "purple"), ("circle", "purple"), 0),
    ("a black square on a white background", ("square", "black"), ("square", "gray"), 1),
    ("a blue triangle on a white background", ("triangle", "red"), ("triangle", "blue"), 0),
]


def draw(shape: str, color: str, path: Path) -> str:
    im = Image.new("RGB", (96, 96), "white")
    d = ImageDraw.Draw(im)
    if shape == "circle":
        d.ellipse((16, 16, 80, 80), fill=color)
    elif shape == "square":
        d.rectangle((18, 18, 78, 78), fill=color)
    else:
        d.polygon([(48, 12), (84, 80), (12, 80)], fill=color)
    im.save(path, optimize=True)
    return path.name


def main() -> None:
    rows = []
    for i, (caption, first, second, label) in enumerate(PAIRS):
        images = [first, second]
        rows.append({"caption": caption, "jpg_0": draw(*images[0], HERE / f"{i}_0.png"),
                     "jpg_1": draw(*images[1], HERE / f"{i}_1.png"), "label_0": label})
    (HERE / "pick_a_pic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
