"""The real-data route on a CelebAMask-HQ-layout tree with small random models: photos and their
annotated masks and captions -> MappingNet data (inversion + controls read off each photo) ->
a MappingNet trained on it; and the whole route from official-format checkpoints (assemble ->
data -> train -> generate / edit -> eval real)."""

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


def test_the_whole_real_route_end_to_end(tree, tmp_path, capsys):
    """Official-format checkpoints (e4e with its StyleGAN2 decoder, FaRL, BiSeNet; small random
    ones) -> assemble -> MappingNet data from CelebAMask-HQ-layout photos (W+ targets: the e4e
    inversions) -> train MappingNet -> assemble with it -> generate and edit -> eval real."""
    import torch

    from helpers import build_tiny_weights, tiny_clip
    from mm2latent.pipeline import Pipeline
    from test_clip import _farl_pth
    from test_real_loaders import bisenet_table, make_e4e_checkpoint, random_state

    src = tmp_path / "downloads"
    src.mkdir()
    make_e4e_checkpoint(src / "e4e_ffhq_encode.pt", seed=2)  # 32 px decoder, 8 ws of 16-d
    torch.save(random_state(bisenet_table(), seed=4), src / "79999_iter.pth")
    torch.manual_seed(5)
    _farl_pth(tiny_clip().eval(), src / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth")
    ours = build_tiny_weights(tmp_path / "ours")  # the control autoencoders and the analyzer
    parts = ["--generator", str(src / "e4e_ffhq_encode.pt"), "--encoder", str(src / "e4e_ffhq_encode.pt"),
             "--text-encoder", str(src / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth"),
             "--parser", str(src / "79999_iter.pth")]
    parts += [a for k in ("mask_ae", "sketch_ae", "coeff_ae", "analyzer")
              for a in (f"--{k.replace('_', '-')}", str(ours / f"{k}.safetensors"))]
    assert main(["assemble", "--out", str(tmp_path / "real"), *parts]) == 0, capsys.readouterr().err

    data = tmp_path / "real_mdata"
    assert main(["mapping-data", "--source", "photos", "--photos", str(tree), "--captions", str(tree / "mm"),
                 "--weights", str(tmp_path / "real"), "--out", str(data), "--chunk", "4"]) == 0, capsys.readouterr().err
    arrays = load_mapping_data(data)
    assert arrays["w"].shape == (len(IDS), 8, 16) and "z" not in arrays  # W+ targets from e4e
    net = tmp_path / "mapping_net.safetensors"
    assert main(["train", "mapping", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "3", "--batch", "4",
                 "--hidden", "16", "--layers", "2", "--val-fraction", "0.2", "--modalities", "text,mask,sketch,coeffs",
                 "--device", "cpu", "--export", str(net)]) == 0, capsys.readouterr().err
    assert main(["assemble", "--out", str(tmp_path / "real2"), *parts, "--mapping-net", str(net)]) == 0

    pipe = Pipeline.from_pretrained(tmp_path / "real2")
    assert pipe.mapping.config.num_ws == 8
    from mm2latent.common.palette import save_mask
    from mm2latent.datasets import CelebAMaskHQ

    save_mask(tmp_path / "mask.png", CelebAMaskHQ(tree)[0].mask)
    out = tmp_path / "face.png"
    assert main(["generate", "--text", "a smiling woman with blond hair", "--mask", str(tmp_path / "mask.png"),
                 "--seed", "1", "--weights", str(tmp_path / "real2"), "--out", str(out)]) == 0, capsys.readouterr().err
    assert Image.open(out).size == (32, 32)
    edited = tmp_path / "edited.png"
    photo = tree / "CelebA-HQ-img" / "0.jpg"
    assert main(["edit", str(photo), "--text", "with blond hair", "--weights", str(tmp_path / "real2"),
                 "--out", str(edited)]) == 0, capsys.readouterr().err
    assert Image.open(edited).size == (32, 32)
    report = tmp_path / "report.json"
    assert main(["eval", "real", "--weights", str(tmp_path / "real2"), "--photos", str(tree), "--captions",
                 str(tree / "mm"), "--num", "4", "--out", str(report)]) == 0, capsys.readouterr().err
    r = json.loads(report.read_text())
    assert r["num"] == 4 and r["inversion"]["method"] == "e4e" and np.isfinite(r["inversion"]["psnr"])
    assert r["mask_miou"]["num"] == 4 and r["text_image_score"]["num"] == 4
    assert np.isfinite(r["fid"]["generated_vs_photos"]) and 0 <= r["mask_miou"]["generated_vs_input_masks"] <= 1
