"""Real-dataset adapters on small trees in exactly the published layouts, built from the real
CelebAMask-HQ samples in ../shared/eval (photos + label maps) where they are present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm2latent.common.errors import UserError
from mm2latent.common.palette import CLASS_INDEX
from mm2latent.datasets import CelebAMaskHQ, ImageFolder, open_photos, read_captions
from mm2latent.datasets.layouts import PART_ORDER, write_part_masks

SHARED = Path(__file__).resolve().parents[2] / "shared" / "eval" / "celebamask-hq"
#: CelebAMask-HQ ids the sample faces get in the tree (two mask sub-folders: 0 and 2)
IDS = [3, 1999, 4001, 4002]


def _real_pairs():
    if not (SHARED / "photos" / "0.jpg").exists():
        pytest.skip("no ../shared/eval CelebAMask-HQ samples")
    return [(np.asarray(Image.open(SHARED / "photos" / f"{i}.jpg").convert("RGB")),
             np.asarray(Image.open(SHARED / "masks-index" / f"{i}.png"))) for i in range(4)]


def _celebamask_tree(root: Path, pairs) -> Path:
    """CelebA-HQ-img/<id>.jpg, CelebAMask-HQ-mask-anno/<id//2000>/<id:05d>_<part>.png, the
    attribute file and MM-CelebA-HQ text/<id>.txt, as the releases lay them out."""
    (root / "CelebA-HQ-img").mkdir(parents=True)
    names = ["Smiling", "Male", "Eyeglasses"]
    rows = []
    for k, (image_id, (photo, labels)) in enumerate(zip(IDS, pairs)):
        Image.fromarray(photo).save(root / "CelebA-HQ-img" / f"{image_id}.jpg", quality=95)
        write_part_masks(labels, root / "CelebAMask-HQ-mask-anno", image_id)
        rows.append(f"{image_id}.jpg " + " ".join("1" if (k + j) % 2 else "-1" for j in range(len(names))))
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text(f"{len(IDS)}\n{' '.join(names)}\n" + "\n".join(rows) + "\n")
    (root / "captions" / "text").mkdir(parents=True)
    for image_id in IDS:
        (root / "captions" / "text" / f"{image_id}.txt").write_text(
            "".join(f"caption {c} of face {image_id}.\n" for c in range(10)))
    return root


def test_celebamask_hq_layout_gives_the_label_maps_back(tmp_path):
    pairs = _real_pairs()
    root = _celebamask_tree(tmp_path / "CelebAMask-HQ", pairs)
    assert (root / "CelebAMask-HQ-mask-anno" / "0" / "01999_skin.png").exists()
    assert (root / "CelebAMask-HQ-mask-anno" / "2" / "04001_hair.png").exists()
    ds = CelebAMaskHQ(root, captions=root / "captions")
    assert ds.ids == IDS and len(ds) == 4
    for i, (photo, labels) in enumerate(pairs):
        s = ds[i]
        assert s.key == str(IDS[i]) and s.image.shape == photo.shape
        assert np.array_equal(s.mask, labels)  # merged in the dataset's order: exactly the label map
        assert len(s.captions) == 10 and s.captions[0] == f"caption 0 of face {IDS[i]}."
        assert set(s.attributes) == {"Smiling", "Male", "Eyeglasses"}
    # the real label maps hold hair where a face has hair: the label order is ours
    assert (ds[0].mask == CLASS_INDEX["hair"]).mean() > 0.05 and (ds[0].mask == CLASS_INDEX["skin"]).mean() > 0.05
    small = CelebAMaskHQ(root, size=128, ids=[4002, 3])
    s = small[0]
    assert s.key == "4002" and s.image.shape == (128, 128, 3) and s.mask.shape == (128, 128)
    assert s.captions == [] and open_photos(root).ids == IDS


def test_later_parts_overwrite_earlier_ones_as_in_g_mask(tmp_path):
    """A hair file that covers skin pixels wins, as the dataset's g_mask.py merge does; a part
    with no file (occluded away) is simply absent."""
    root = tmp_path / "c"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    Image.new("RGB", (32, 32), (90, 60, 50)).save(root / "CelebA-HQ-img" / "7.jpg")
    folder = root / "CelebAMask-HQ-mask-anno" / "0"
    folder.mkdir(parents=True)
    skin = np.zeros((32, 32), np.uint8)
    skin[4:28, 4:28] = 255
    hair = np.zeros((32, 32), np.uint8)
    hair[:12] = 255
    Image.fromarray(skin).convert("RGB").save(folder / "00007_skin.png")  # the release's files are RGB
    Image.fromarray(hair).save(folder / "00007_hair.png")
    m = CelebAMaskHQ(root)[0].mask
    assert m[20, 20] == CLASS_INDEX["skin"] and m[6, 6] == CLASS_INDEX["hair"] and m[20, 1] == 0
    assert PART_ORDER.index("hair") > PART_ORDER.index("skin")


def test_image_folder_reads_an_ffhq_like_tree(tmp_path):
    root = tmp_path / "ffhq" / "images1024x1024"
    for k, sub in enumerate(["00000", "00000", "01000"]):
        (root / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (k * 60, 20, 20)).save(root / sub / f"{k * 500:05d}.png")
    (root / "LICENSE.txt").write_text("not a photo")
    (tmp_path / "caps" / "text").mkdir(parents=True)
    (tmp_path / "caps" / "text" / "00500.txt").write_text("a face.\n\nanother caption.\n")
    ds = ImageFolder(tmp_path / "ffhq", size=16, captions=tmp_path / "caps")
    assert len(ds) == 3 and [ds.key(i) for i in range(3)] == [
        "images1024x1024/00000/00000", "images1024x1024/00000/00500", "images1024x1024/01000/01000"]
    s = ds[1]
    assert s.image.shape == (16, 16, 3) and s.mask is None and s.captions == ["a face.", "another caption."]
    assert isinstance(open_photos(tmp_path / "ffhq"), ImageFolder)


def test_bad_trees_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="photo folder not found"):
        ImageFolder(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no PNG or JPEG"):
        open_photos(tmp_path / "empty")
    root = tmp_path / "c"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    with pytest.raises(UserError, match="no <id>.jpg"):
        CelebAMaskHQ(root)
    (root / "CelebA-HQ-img" / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="no photo 5.jpg"):
        CelebAMaskHQ(root, ids=[5])
    with pytest.raises(UserError, match="not a readable image"):
        CelebAMaskHQ(root)[0]
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text("1\nSmiling Male\n0.jpg 1\n")
    with pytest.raises(UserError, match="attribute file"):
        CelebAMaskHQ(root)
    assert read_captions(tmp_path / "missing.txt") == []
