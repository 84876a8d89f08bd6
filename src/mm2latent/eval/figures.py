"""Figures for docs/: the teaser grid and the editing sheet.

Teaser (like the paper's): one row per example -- the input control (mask in
colour, or sketch), the caption written under it, then the outputs for three
seeds. Editing sheet: photo, inverted reconstruction, and one column per edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

ROWS = (
    ("a smiling woman with blond hair", "mask_long_hair.png", None),
    ("a woman wearing a hat", "mask_hat.png", None),
    ("a man with black hair and a beard", "mask_short_hair.png", None),
    ("an old bald man wearing eyeglasses", "mask_bald.png", None),
    ("a young woman with bangs and brown hair", None, "sketch_long_hair.png"),
    ("This person has gray hair and wears a hat.", None, None),
)


def _caption_tile(text: str, w: int, h: int = 34) -> np.ndarray:
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    words, lines, cur = text.split(), [], ""
    for word in words:
        if d.textlength(cur + " " + word) > w - 6 and cur:
            lines.append(cur)
            cur = word
        else:
            cur = (cur + " " + word).strip()
    lines.append(cur)
    for i, ln in enumerate(lines[:3]):
        d.text((3, 1 + 11 * i), ln, fill=(0, 0, 0))
    return np.asarray(im)


def teaser(pipe, examples_dir: str | Path, seeds: Sequence[int] = (0, 1, 2), rows=ROWS) -> np.ndarray:
    from ..common.imageio import load_image
    from ..common.palette import index_to_color, load_mask

    ex = Path(examples_dir)
    r = pipe.resolution
    out_rows = []
    for text, mask_name, sketch_name in rows:
        kw: dict[str, Any] = {"text": text}
        if mask_name:
            kw["mask"] = str(ex / mask_name)
            ctrl = index_to_color(load_mask(ex / mask_name, r))
        elif sketch_name:
            kw["sketch"] = str(ex / sketch_name)
            ctrl = np.asarray(Image.fromarray(load_image(ex / sketch_name)).resize((r, r)))
        else:
            ctrl = np.full((r, r, 3), 255, np.uint8)
        ctrl = np.concatenate([ctrl, _caption_tile(text, r)], 0)
        outs = [np.asarray(im) for im in pipe.generate_batch(seeds=list(seeds), **kw)]
        pad = np.full((34, r, 3), 255, np.uint8)
        tiles = [ctrl] + [np.concatenate([o, pad], 0) for o in outs]
        out_rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    return np.concatenate(out_rows, 0)


def editing_sheet(pipe, photos: Sequence[str | Path], edits: Sequence[dict], refine_steps: int = 0) -> np.ndarray:
    """Rows: photo (aligned), reconstruction (with the W+ inverter: also the W encoder's, for comparison),
    then one column per edit (dict of edit kwargs + 'label'), edited from the default inversion."""
    from ..pipeline.core import to_pil

    r = pipe.resolution
    rows = []
    both = pipe.wplus_inverter is not None and pipe.image_encoder is not None
    inv_tiles = ["inverted (W)", "inverted (W+)"] if both else ["inverted"]
    header = [_caption_tile(t, r) for t in ["photo"] + inv_tiles] + [_caption_tile(e["label"], r) for e in edits]
    rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in header], 1))
    for ph in photos:
        inv = pipe.invert(ph, refine_steps=refine_steps)
        tiles = [np.asarray(to_pil(inv.image)[0])]
        if both:
            tiles.append(np.asarray(to_pil(pipe.invert(ph, refine_steps=refine_steps, inverter="w").reconstruction)[0]))
        tiles.append(np.asarray(to_pil(inv.reconstruction)[0]))
        for e in edits:
            kw = {k: v for k, v in e.items() if k != "label"}
            tiles.append(np.asarray(pipe.edit(inv, **kw)))
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    return np.concatenate(rows, 0)
