"""Image loading and saving with validation.

Every image that enters the package goes through :func:`load_image`, which
turns the many ways a file can be wrong into one :class:`UserError` line.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError
from .fileio import atomic_path, check_input_file

#: Largest image we accept anywhere (CLI and web; photo, mask, sketch), in pixels: 2048 x 2048 is
#: twice CelebA-HQ's side, and bounds the memory of every step after decoding (a painted mask's
#: nearest-colour snap alone needs ~230 bytes a pixel).
MAX_PIXELS = 2048 * 2048


def check_pixels(width: int, height: int, what: str = "the image") -> None:
    """One clear error for an image over :data:`MAX_PIXELS`; call it before any array work."""
    if int(width) * int(height) > MAX_PIXELS:
        raise UserError(f"{what} is too large ({width}x{height}); the limit is {MAX_PIXELS} pixels "
                        f"(for example 2048x2048)")
#: Smallest side we accept.
MIN_SIDE = 8

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def _open_checked(path: str | os.PathLike) -> Image.Image:
    p = check_input_file(path, "image")
    data = p.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            check_pixels(w, h, f"image {p}")
            im.load()
        except UserError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError(f"image {p} is too large (decompression bomb guard)") from None
        except UnidentifiedImageError:
            raise UserError(f"not a readable image: {p}") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise UserError(f"image {p} is corrupt or truncated ({e})") from None
    if min(im.size) < MIN_SIDE:
        raise UserError(f"image {p} is too small ({im.size[0]}x{im.size[1]}); need at least {MIN_SIDE} px per side")
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, 16-bit, CMYK, LA, RGBA, ...) to 8-bit RGB."""
    im = ImageOps.exif_transpose(im) if hasattr(im, "getexif") else im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Load an image file as an RGB uint8 array of shape (H, W, 3)."""
    return np.asarray(to_rgb(_open_checked(path)), dtype=np.uint8).copy()


def load_raw_image(path: str | os.PathLike) -> Image.Image:
    """Open and validate an image, keeping its mode (used by mask loading)."""
    return _open_checked(path)


def _format_for(path: Path) -> str:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"unsupported output extension {path.suffix!r} for {path}; use .png or .jpg")
    return fmt


def save_image(path: str | os.PathLike, image: np.ndarray | Image.Image, **save_kw) -> Path:
    """Save an RGB/L uint8 array or a PIL image atomically (PNG or JPEG by suffix)."""
    p = Path(path)
    fmt = _format_for(p)
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    if fmt == "JPEG" and im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    with atomic_path(p) as tmp:
        if fmt == "PNG":
            # optimize=False and no timestamps keep the bytes identical across runs
            im.save(tmp, format="PNG", **save_kw)
        else:
            im.save(tmp, format="JPEG", quality=save_kw.pop("quality", 95), **save_kw)
    return p


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1] (the generator's range)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [-1, 1] -> uint8 (H, W, 3)."""
    t = t.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return t.permute(1, 2, 0).numpy()


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to square and resize to ``size`` with Lanczos."""
    im = Image.fromarray(image)
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != size:
        im = im.resize((size, size), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8).copy()


def make_grid(tiles, cols: int) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 images row by row; missing cells stay black."""
    tiles = [np.asarray(t, dtype=np.uint8) for t in tiles]
    if not tiles:
        raise ValueError("no tiles")
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, t in enumerate(tiles):
        y, x = divmod(i, cols)
        grid[y * h:(y + 1) * h, x * w:(x + 1) * w] = t
    return grid
