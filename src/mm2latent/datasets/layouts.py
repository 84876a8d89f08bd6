"""Adapters for the published real-face datasets, each documented by the layout it reads.

CelebAMask-HQ (switchablenorms/CelebAMask-HQ), ``ROOT/``::

    CelebA-HQ-img/<id>.jpg                               30000 photos, 1024 x 1024, id 0..29999
    CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png
                                                         512 x 512 part masks (non-zero = part);
                                                         a part the annotators found occluded
                                                         away has no file
    CelebAMask-HQ-attribute-anno.txt                     optional: "30000", the 40 attribute
                                                         names, then "<id>.jpg  1 -1 ..." lines

The part masks are merged into one label map the way the dataset's own ``g_mask.py`` does: in
the order of :data:`PART_ORDER`, each part overwriting the ones before it, with label =
position + 1 -- which is our 19-class order (:data:`mm2latent.common.palette.CLASS_NAMES`).

MM-CelebA-HQ captions (IIGROUP/MM-CelebA-HQ-Dataset), ``CAPTIONS/``::

    text/<id>.txt                                        ten captions, one a line

Any other folder of photos (FFHQ's ``images1024x1024/00000/00000.png`` and the like) is an
:class:`ImageFolder`: every PNG/JPEG under it, in sorted path order, no masks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..common.errors import UserError
from ..common.imageio import load_image, load_raw_image, resize_image
from ..common.palette import CLASS_NAMES, resize_mask

PHOTO_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
CAPTION_DIR = "text"
#: the part files' names, in the dataset's merge order (a later part overwrites an earlier one)
PART_ORDER: tuple[str, ...] = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                               "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
#: photos per mask sub-folder
MASKS_PER_FOLDER = 2000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

assert tuple(CLASS_NAMES[1:]) == PART_ORDER  # label = merge position + 1 is our class index


@dataclass
class RealSample:
    """One photo and what the dataset knows of it (``mask``: (H, W) uint8 labels in our order)."""

    key: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray | None = None
    captions: list[str] = field(default_factory=list)
    attributes: dict[str, bool] | None = None


def read_captions(path: str | os.PathLike) -> list[str]:
    """The captions of one MM-CelebA-HQ text file (non-empty lines, stripped)."""
    try:
        text = Path(path).read_text("utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"caption file {path} is unreadable ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


class ImageFolder:
    """Every PNG/JPEG under ``root`` (recursively, sorted by path); ``size`` centre-crops and
    resizes. ``captions``: an MM-CelebA-HQ-style root whose ``text/<stem>.txt`` go with each photo."""

    def __init__(self, root: str | os.PathLike, size: int | None = None, captions: str | os.PathLike | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"photo folder not found: {self.root}")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise UserError(f"no PNG or JPEG photos under {self.root}")
        self.size = size
        self.captions = Path(captions) if captions is not None else None

    def __len__(self) -> int:
        return len(self.files)

    def key(self, i: int) -> str:
        return self.files[i].relative_to(self.root).with_suffix("").as_posix()

    def __getitem__(self, i: int) -> RealSample:
        image = load_image(self.files[i])
        if self.size:
            image = resize_image(image, self.size)
        caps = read_captions(self.captions / CAPTION_DIR / f"{self.files[i].stem}.txt") if self.captions else []
        return RealSample(key=self.key(i), image=image, captions=caps)


class CelebAMaskHQ:
    """CelebAMask-HQ photos with their merged part masks (and attributes, and MM-CelebA-HQ
    captions when ``captions`` is given). ``ids`` restricts and orders the photos (default: every
    ``<id>.jpg`` in ``CelebA-HQ-img``, by id); ``size`` resizes photos and masks alike."""

    def __init__(self, root: str | os.PathLike, size: int | None = None, captions: str | os.PathLike | None = None,
                 ids: list[int] | None = None):
        self.root = Path(root)
        photos = self.root / PHOTO_DIR
        if not photos.is_dir():
            raise UserError(f"{self.root} is not a CelebAMask-HQ folder: it has no {PHOTO_DIR}/")
        found = sorted(int(p.stem) for p in photos.iterdir() if p.suffix.lower() == ".jpg" and p.stem.isdigit())
        if ids is None:
            ids = found
        else:
            missing = sorted(set(ids) - set(found))
            if missing:
                raise UserError(f"no photo {missing[0]}.jpg in {photos}")
        if not ids:
            raise UserError(f"no <id>.jpg photos in {photos}")
        self.ids = list(ids)
        self.size = size
        self.captions = Path(captions) if captions is not None else None
        self.has_masks = (self.root / MASK_DIR).is_dir()
        self.attribute_table = read_attribute_table(self.root / ATTRIBUTE_FILE)

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, image_id: int) -> np.ndarray | None:
        """The merged (512, 512) label map of one photo, or None when it has no part files."""
        folder = self.root / MASK_DIR / str(image_id // MASKS_PER_FOLDER)
        labels = None
        for index, part in enumerate(PART_ORDER, start=1):
            path = folder / f"{image_id:05d}_{part}.png"
            if not path.exists():
                continue
            a = np.asarray(load_raw_image(path))
            on = (a[..., 0] if a.ndim == 3 else a) != 0
            if labels is None:
                labels = np.zeros(on.shape, np.uint8)
            elif on.shape != labels.shape:
                raise UserError(f"{path} is {on.shape[1]}x{on.shape[0]}, the other parts {labels.shape[1]}x{labels.shape[0]}")
            labels[on] = index
        return labels

    def __getitem__(self, i: int) -> RealSample:
        image_id = self.ids[i]
        image = load_image(self.root / PHOTO_DIR / f"{image_id}.jpg")
        mask = self.mask(image_id) if self.has_masks else None
        if self.size:
            image = resize_image(image, self.size)
            mask = resize_mask(mask, self.size) if mask is not None else None
        caps = read_captions(self.captions / CAPTION_DIR / f"{image_id}.txt") if self.captions else []
        attrs = self.attribute_table.get(image_id) if self.attribute_table else None
        return RealSample(key=str(image_id), image=image, mask=mask, captions=caps, attributes=attrs)


def read_attribute_table(path: Path) -> dict[int, dict[str, bool]]:
    """CelebAMask-HQ-attribute-anno.txt -> {id: {attribute: bool}} (empty when absent)."""
    if not path.exists():
        return {}
    try:
        lines = path.read_text("utf-8").splitlines()
        names = lines[1].split()
        table = {}
        for line in lines[2:]:
            cols = line.split()
            if not cols:
                continue
            if len(cols) != len(names) + 1:
                raise ValueError(f"{len(cols) - 1} values where the header names {len(names)}")
            table[int(Path(cols[0]).stem)] = {n: v == "1" for n, v in zip(names, cols[1:])}
    except (OSError, UnicodeDecodeError, IndexError, ValueError) as e:
        raise UserError(f"attribute file {path} is not in the CelebAMask-HQ format ({e})") from None
    return table


def open_photos(root: str | os.PathLike, size: int | None = None, captions: str | os.PathLike | None = None):
    """The adapter for ``root``'s layout: :class:`CelebAMaskHQ` when it holds ``CelebA-HQ-img/``,
    else an :class:`ImageFolder`."""
    if (Path(root) / PHOTO_DIR).is_dir():
        return CelebAMaskHQ(root, size=size, captions=captions)
    return ImageFolder(root, size=size, captions=captions)


def write_part_masks(labels: np.ndarray, folder: Path, image_id: int) -> list[Path]:
    """Split a label map into CelebAMask-HQ part files (the inverse of :meth:`CelebAMaskHQ.mask`):
    for building trees in the published layout, e.g. from our own masks."""
    out = folder / str(image_id // MASKS_PER_FOLDER)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, part in enumerate(PART_ORDER, start=1):
        on = labels == index
        if on.any():
            path = out / f"{image_id:05d}_{part}.png"
            Image.fromarray(on.astype(np.uint8) * 255, "L").save(path)
            written.append(path)
    return written
