"""The Face World: determinism, exact masks, attributes that render, coefficients obeyed, CLI."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mm2latent.common.palette import CLASS_INDEX as C
from mm2latent.world import (ATTRIBUTES, COEFF_NAMES, make_sample, render, sample_params, set_attribute,
                             set_coeffs)
from mm2latent.world.calibration import CALIBRATED_CLASSES, mean_stats, world_masks
from mm2latent.world.dataset import FaceWorldDataset

CLI = [sys.executable, "-m", "mm2latent.cli.main"]


def test_same_seed_same_sample_and_different_indices_differ():
    a, b = make_sample(3, 11), make_sample(3, 11)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert [c.text for c in a.captions] == [c.text for c in b.captions]
    c = make_sample(3, 12)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(make_sample(4, 11).image, a.image)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_sizes_render_the_same_face(size):
    r = render(sample_params(0, 5), size)
    assert r.image.shape == (size, size, 3) and r.mask.shape == (size, size)
    ref = render(sample_params(0, 5), 64).mask
    # same geometry at every size: downsampled labels agree with the 64px render
    step = size // 64
    assert (r.mask[step // 2::step, step // 2::step] == ref).mean() > 0.9


def test_unknown_size_is_a_user_error():
    from mm2latent.common.errors import UserError

    with pytest.raises(UserError, match="unsupported size"):
        render(sample_params(0, 0), 100)


def test_mask_matches_image_regions():
    """Pixels labelled hair take the hair colour; recolouring hair changes only hair pixels."""
    idx = next(i for i in range(200) if sample_params(0, i).attrs["Black_Hair"] and not sample_params(0, i).attrs["Wearing_Hat"])
    p = sample_params(0, idx)
    black = render(p, 128)
    blond = render(set_attribute(p, "Blond_Hair", True), 128)
    assert np.array_equal(black.mask, blond.mask)
    hair = black.mask == C["hair"]
    assert hair.sum() > 500
    diff = np.abs(black.image.astype(int) - blond.image.astype(int)).sum(-1) > 60
    # blur spreads a pixel or two across borders; nearly all changed pixels are hair
    assert (diff & hair).sum() / diff.sum() > 0.9
    assert black.image[hair].mean() < 80 and blond.image[hair].mean() > 110
    # the skin label sits on skin-coloured pixels, background differs from the face
    skin = black.mask == C["skin"]
    assert skin.sum() > 2000
    assert np.abs(black.image[skin].mean(0) - black.image[black.mask == 0].mean(0)).sum() > 20


def test_all_classes_appear_across_samples():
    seen = np.zeros(19, bool)
    for i in range(120):
        seen |= np.bincount(render(sample_params(0, i), 64).mask.ravel(), minlength=19) > 0
    assert seen.all(), [i for i in range(19) if not seen[i]]


REGIONS = {
    "Eyeglasses": ("eye_g",), "Wearing_Hat": ("hat",), "Wearing_Earrings": ("ear_r",),
    "Wearing_Necklace": ("neck_l",), "Wearing_Necktie": ("cloth", "neck"),
    "Smiling": ("mouth", "u_lip", "l_lip", "l_eye", "r_eye"), "Mouth_Slightly_Open": ("mouth", "u_lip", "l_lip"),
    "Big_Lips": ("u_lip", "l_lip"), "Wearing_Lipstick": ("u_lip", "l_lip"),
    "Bushy_Eyebrows": ("l_brow", "r_brow"), "Arched_Eyebrows": ("l_brow", "r_brow"),
    "Narrow_Eyes": ("l_eye", "r_eye"), "Big_Nose": ("nose",), "Pointy_Nose": ("nose",),
    "Black_Hair": ("hair",), "Blond_Hair": ("hair",), "Brown_Hair": ("hair",), "Gray_Hair": ("hair",),
    "Wavy_Hair": ("hair",), "Straight_Hair": ("hair",), "Bangs": ("hair",), "Sideburns": ("hair",),
    "Mustache": ("u_lip", "mouth", "nose"), "Goatee": ("l_lip",),
}


def _toggle_pair(attr):
    for i in range(400):
        p = sample_params(0, i)
        if not p.attrs[attr] and not p.attrs["Wearing_Hat"] and not p.attrs["Bald"] or attr in ("Bald",) and not p.attrs[attr]:
            q = set_attribute(p, attr, True)
            if q.attrs[attr]:
                return p, q
    raise AssertionError(f"no sample to toggle {attr}")


@pytest.mark.parametrize("attr", ATTRIBUTES)
def test_each_attribute_changes_the_render(attr):
    p, q = _toggle_pair(attr)
    a, b = render(p, 128), render(q, 128)
    changed = np.abs(a.image.astype(int) - b.image.astype(int)).max(-1) > 25
    assert changed.sum() >= 15, f"{attr} barely changes the image ({changed.sum()} px)"
    if attr in REGIONS:
        cls = [C[n] for n in REGIONS[attr]]
        region = np.isin(a.mask, cls) | np.isin(b.mask, cls)
        ys, xs = np.nonzero(region)
        assert len(ys), f"{attr}: region classes absent"
        pad = 10
        box = np.zeros_like(region)
        box[max(0, ys.min() - pad):ys.max() + pad + 1, max(0, xs.min() - pad):xs.max() + pad + 1] = True
        inside = (changed & box).sum() / changed.sum()
        assert inside > 0.6, f"{attr}: only {inside:.0%} of the change is near its region"


def test_attribute_constraints_and_frequencies():
    n = 4000
    counts = {a: 0 for a in ATTRIBUTES}
    male_counts = {a: 0 for a in ATTRIBUTES}
    males = 0
    hair = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
    for i in range(n):
        at = sample_params(7, i).attrs
        assert sum(at[h] for h in hair) == (0 if at["Bald"] else 1)
        assert not (at["Wavy_Hair"] and at["Straight_Hair"])
        assert at["No_Beard"] == (not (at["Mustache"] or at["Goatee"]))
        for a in ATTRIBUTES:
            counts[a] += at[a]
            male_counts[a] += at[a] and at["Male"]
        males += at["Male"]
    for a in ATTRIBUTES:
        f = counts[a] / n
        assert 0.05 <= f <= 0.95 or a in ("No_Beard",), f"{a} frequency {f:.3f}"
    # correlated like real faces
    assert male_counts["Mustache"] == counts["Mustache"]
    assert male_counts["Wearing_Lipstick"] < 0.05 * counts["Wearing_Lipstick"]
    # accessories appear with both sexes
    for a in ("Wearing_Earrings", "Wearing_Necklace", "Wearing_Necktie", "Eyeglasses", "Wearing_Hat", "Smiling"):
        assert 0 < male_counts[a] < counts[a], a


def test_coefficients_are_obeyed():
    p = set_coeffs(sample_params(0, 2), yaw=0, pitch=0, roll=0)

    def centroid(mask, cls):
        ys, xs = np.nonzero(np.isin(mask, cls))
        return xs.mean(), ys.mean()

    base = render(p, 128).mask
    right = render(set_coeffs(p, yaw=25), 128).mask
    left = render(set_coeffs(p, yaw=-25), 128).mask
    nose = [C["nose"]]
    assert centroid(right, nose)[0] > centroid(base, nose)[0] + 2 > centroid(left, nose)[0] + 4
    up = render(set_coeffs(p, pitch=12), 128).mask
    assert centroid(up, nose)[1] < centroid(base, nose)[1] - 1
    rolled = render(set_coeffs(p, roll=12), 128).mask
    (lx, ly), (rx, ry) = centroid(rolled, [C["l_eye"]]), centroid(rolled, [C["r_eye"]])
    angle = np.degrees(np.arctan2(ly - ry, lx - rx))
    assert 8 < angle < 16
    closed = render(set_coeffs(p, mouth_open=0.0, smile=0.0), 128).mask
    opened = render(set_coeffs(p, mouth_open=1.0, smile=0.0), 128).mask
    assert (opened == C["mouth"]).sum() > (closed == C["mouth"]).sum() + 20
    wide = render(set_coeffs(p, face_width=1.0), 128).mask
    narrow = render(set_coeffs(p, face_width=0.0), 128).mask
    assert (wide == C["skin"]).sum() > (narrow == C["skin"]).sum() * 1.05
    q = set_coeffs(p, smile=0.9)
    assert q.attrs["Smiling"] and not set_coeffs(p, smile=0.1).attrs["Smiling"]
    assert set(p.coeffs) == set(COEFF_NAMES)


def test_captions_agree_with_attributes():
    for i in range(200):
        s = make_sample(0, i, 64)
        assert len(s.captions) == 4 and len(s.captions_heldout) == 2
        for c in s.captions + s.captions_heldout:
            assert c.text.strip()
            for k, v in c.facts.items():
                assert s.attributes[k] == v, (c.text, k)
        assert all(c.heldout for c in s.captions_heldout)
        assert not any(c.heldout for c in s.captions)


def test_sketch_follows_the_image():
    s = make_sample(0, 1)
    edges = s.sketch < 128
    assert 0.03 < edges.mean() < 0.4
    # the face outline is in the sketch: edges near skin/background borders
    m = s.mask
    border = np.zeros_like(edges)
    border[1:-1, 1:-1] = (m[1:-1, 1:-1] != m[:-2, 1:-1]) | (m[1:-1, 1:-1] != m[1:-1, :-2])
    near = border | np.roll(border, 1, 0) | np.roll(border, -1, 0) | np.roll(border, 1, 1) | np.roll(border, -1, 1)
    assert (edges & near).sum() / max(1, near.sum()) > 0.3


def test_layout_calibrated_against_real_masks():
    ref = json.loads((Path(__file__).parent / "data" / "celebamask_hq_layout.json").read_text())
    w = mean_stats(world_masks(60, seed=5, size=64))
    for n in CALIBRATED_CLASSES:
        ratio = w[f"frac_{n}"] / ref[f"frac_{n}"]
        assert 1 / 1.5 <= ratio <= 1.5, (n, ratio)
    for k in ("skin_top", "skin_bottom", "eye_y", "mouth_y"):
        assert abs(w[k] - ref[k]) < 0.08, k


def test_dataset_items():
    ds = FaceWorldDataset(size=64, length=10, split="val")
    it = ds[3]
    assert it["image"].shape == (3, 64, 64) and it["image"].min() >= -1 and it["image"].max() <= 1
    assert it["mask"].shape == (64, 64) and it["mask"].dtype == torch.int64
    assert it["sketch"].shape == (1, 64, 64)
    assert it["attributes"].shape == (len(ATTRIBUTES),) and it["coeffs"].abs().max() <= 1
    assert torch.equal(ds[3]["image"], it["image"])
    assert not torch.equal(FaceWorldDataset(size=64, length=10, split="train")[3]["image"], it["image"])
    with pytest.raises(IndexError):
        ds[10]


def _digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_cli_render_writes_files_deterministically(tmp_path):
    for name in ("a", "b"):
        r = subprocess.run(CLI + ["world", "render", "--num", "3", "--seed", "0", "--out", str(tmp_path / name), "--size", "64"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(f"{i:06d}{s}" for i in range(3) for s in (".png", "_mask.png", "_sketch.png", ".json"))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    meta = json.loads((tmp_path / "a" / "000001.json").read_text())
    assert set(meta["attributes"]) == set(ATTRIBUTES) and set(meta["coefficients"]) == set(COEFF_NAMES)
    assert len(meta["captions"]) >= 3
    from mm2latent.common.palette import load_mask

    m = load_mask(tmp_path / "a" / "000001_mask.png")
    assert np.array_equal(m, make_sample(0, 1, 64).mask)


@pytest.mark.parametrize("args,needle", [
    (["--num", "-1"], "positive"),
    (["--num", "2", "--size", "100"], "unsupported size"),
    (["--num", "x"], "integer"),
])
def test_cli_render_bad_input(tmp_path, args, needle):
    r = subprocess.run(CLI + ["world", "render", "--out", str(tmp_path / "o")] + args, capture_output=True, text=True)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_render_unwritable_out(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    r = subprocess.run(CLI + ["world", "render", "--num", "1", "--out", str(f)], capture_output=True, text=True)
    assert r.returncode == 2 and "not a directory" in r.stderr and "Traceback" not in r.stderr
    assert f.read_text() == "keep me"
    r = subprocess.run(CLI + ["world", "render", "--num", "1", "--out", str(f / "sub")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
