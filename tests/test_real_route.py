"""The real-data route on a CelebAMask-HQ-layout tree with small random models: photos and their
annotated masks and captions -> MappingNet data (inversion + controls read off each photo) ->
a MappingNet trained on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import S, build_tiny_weights
from mm2latent.cli.main import main
from mm2latent.datasets.layouts import write_part_masks
from mm2latent.train.mapping_data import load_mapping_data

IDS = [0, 1, 2, 2001, 2002]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return build_tiny_weights(tmp_path_factory.mktemp("w"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """CelebA-HQ-img/<id>.jpg (64 px here), CelebAMask-HQ-mask-anno/<id//2000>/<id:05d>_<part>.png
    and MM-CelebA-HQ text/<id>.txt, with a face-like label map per photo."""
    root = tmp_path_factory.mktemp("CelebAMask-HQ")
    (root / "CelebA-HQ-img").mkdir()
    (root / "mm" / "text").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for image_id in IDS:
        labels = np.zeros((64, 64), np.uint8)
        r = rng.integers(16, 24)
        labels[(yy - 32) ** 2 + (xx - 32) ** 2 < (r + 6) ** 2] = 13  # hair
        labels[(yy - 34) ** 2 + (xx - 32) ** 2 < r ** 2] = 1  # skin
        labels[28:31, 24:28] = 4  # eyes
        labels[28:31, 36:40] = 5
        photo = np.stack([labels * 12 + 40, labels * 7 + 30, 200 - labels * 9], -1).astype(np.uint8)
        photo = np.clip(photo + rng.integers(0, 20, photo.shape), 0, 255).astype(np.uint8)
        Image.fromarray(photo).save(root / "CelebA-HQ-img" / f"{image_id}.jpg", quality=95)
        write_part_masks(labels, root / "CelebAMask-HQ-mask-anno", image_id)
        (root / "mm" / "text" / f"{image_id}.txt").write_text(
            "".join(f"This person has {'blond' if c % 2 else 'black'} hair and is smiling.\n" for c in range(10)))
    return root


def test_mapping_data_from_photos_then_training(weights, tree, tmp_path, capsys):
    out = tmp_path / "mdata"
    argv = ["mapping-data", "--source", "photos", "--photos", str(tree), "--captions", str(tree / "mm"),
            "--weights", str(weights), "--out", str(out), "--chunk", "2", "--num", "100"]
    assert main(argv) == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num"] == len(IDS) and meta["source"] == "photos" and "text_emb" in meta["arrays"]
    data = load_mapping_data(out, names=("w", "mask", "image_emb", "mask_emb", "text_emb", "z"))
    assert data["w"].shape == (len(IDS), 16) and data["text_emb"].shape[0] == len(IDS)
    assert np.isfinite(data["w"]).all() and np.isfinite(data["text_emb"].astype(np.float32)).all()
    # the stored masks are the annotations (resized), not the random parser's guesses
    from mm2latent.datasets import CelebAMaskHQ

    ds = CelebAMaskHQ(tree, size=data["mask"].shape[-1])
    for k in range(len(IDS)):
        assert np.array_equal(data["mask"][k], ds[k].mask)
    # resumable: a deleted chunk is made again, identically; the others are kept
    first = (out / "chunk-00001.npz").read_bytes()
    (out / "chunk-00001.npz").unlink()
    mtime = (out / "chunk-00000.npz").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "chunk-00001.npz").read_bytes() == first and (out / "chunk-00000.npz").stat().st_mtime_ns == mtime
    # and MappingNet trains on it
    exp = tmp_path / "mapping_net.safetensors"
    assert main(["train", "mapping", "--data", str(out), "--out", str(tmp_path / "run"), "--steps", "4",
                 "--batch", "4", "--hidden", "16", "--layers", "2", "--val-fraction", "0.2",
                 "--export", str(exp)]) == 0, capsys.readouterr().err
    assert exp.exists()


def test_photo_route_refusals(weights, tree, tmp_path, capsys):
    base = ["mapping-data", "--weights", str(weights), "--out", str(tmp_path / "m")]
    assert main(base + ["--source", "photos"]) == 2
    assert "--photos ROOT" in capsys.readouterr().err
    assert main(base + ["--captions", str(tree / "mm")]) == 2
    assert "--captions goes with --source photos" in capsys.readouterr().err
    (tmp_path / "nocaps" / "text").mkdir(parents=True)
    assert main(base + ["--source", "photos", "--photos", str(tree), "--captions", str(tmp_path / "nocaps")]) == 2
    assert "has no captions" in capsys.readouterr().err
    assert S == 32  # the tiny models' size: photos are brought to the generator's
