"""``mm2latent eval real`` and the FID Inception-v3 loader.

The Inception file is written here from a table of the published ``pt_inception-2015-12-05``
state dict (torchvision's Inception3 names and shapes, 1008 classes, no auxiliary head; a bare
dict of tensors), with random values; the network is checked against a functional forward
written here from that table (F.conv2d / F.batch_norm on the file's tensors, and the FID graph's
pooling: zero padding left out of the A/C/E1 pool-branch averages, a max pool in Mixed_7c).
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import build_tiny_weights
from mm2latent.cli.main import main
from mm2latent.common.errors import UserError
from mm2latent.datasets.layouts import write_part_masks

# ------------------------------------------------------------------ the published layout, as a table

# (name, in, out, kernel (h, w), stride, padding (h, w)) for every conv-bn-relu unit
def _a(name, cin, pool):
    return [(f"{name}.branch1x1", cin, 64, (1, 1), 1, (0, 0)), (f"{name}.branch5x5_1", cin, 48, (1, 1), 1, (0, 0)),
            (f"{name}.branch5x5_2", 48, 64, (5, 5), 1, (2, 2)), (f"{name}.branch3x3dbl_1", cin, 64, (1, 1), 1, (0, 0)),
            (f"{name}.branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)), (f"{name}.branch3x3dbl_3", 96, 96, (3, 3), 1, (1, 1)),
            (f"{name}.branch_pool", cin, pool, (1, 1), 1, (0, 0))]


def _c(name, c7):
    r, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
    return [(f"{name}.branch1x1", 768, 192, (1, 1), 1, (0, 0)), (f"{name}.branch7x7_1", 768, c7, (1, 1), 1, (0, 0)),
            (f"{name}.branch7x7_2", c7, c7, r[0], 1, r[1]), (f"{name}.branch7x7_3", c7, 192, col[0], 1, col[1]),
            (f"{name}.branch7x7dbl_1", 768, c7, (1, 1), 1, (0, 0)), (f"{name}.branch7x7dbl_2", c7, c7, col[0], 1, col[1]),
            (f"{name}.branch7x7dbl_3", c7, c7, r[0], 1, r[1]), (f"{name}.branch7x7dbl_4", c7, c7, col[0], 1, col[1]),
            (f"{name}.branch7x7dbl_5", c7, 192, r[0], 1, r[1]), (f"{name}.branch_pool", 768, 192, (1, 1), 1, (0, 0))]


def _e(name, cin):
    return [(f"{name}.branch1x1", cin, 320, (1, 1), 1, (0, 0)), (f"{name}.branch3x3_1", cin, 384, (1, 1), 1, (0, 0)),
            (f"{name}.branch3x3_2a", 384, 384, (1, 3), 1, (0, 1)), (f"{name}.branch3x3_2b", 384, 384, (3, 1), 1, (1, 0)),
            (f"{name}.branch3x3dbl_1", cin, 448, (1, 1), 1, (0, 0)), (f"{name}.branch3x3dbl_2", 448, 384, (3, 3), 1, (1, 1)),
            (f"{name}.branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1)), (f"{name}.branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0)),
            (f"{name}.branch_pool", cin, 192, (1, 1), 1, (0, 0))]


UNITS = ([("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0)), ("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0)),
          ("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1)), ("Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0)),
          ("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0))]
         + _a("Mixed_5b", 192, 32) + _a("Mixed_5c", 256, 64) + _a("Mixed_5d", 288, 64)
         + [("Mixed_6a.branch3x3", 288, 384, (3, 3), 2, (0, 0)), ("Mixed_6a.branch3x3dbl_1", 288, 64, (1, 1), 1, (0, 0)),
            ("Mixed_6a.branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)), ("Mixed_6a.branch3x3dbl_3", 96, 96, (3, 3), 2, (0, 0))]
         + _c("Mixed_6b", 128) + _c("Mixed_6c", 160) + _c("Mixed_6d", 160) + _c("Mixed_6e", 192)
         + [("Mixed_7a.branch3x3_1", 768, 192, (1, 1), 1, (0, 0)), ("Mixed_7a.branch3x3_2", 192, 320, (3, 3), 2, (0, 0)),
            ("Mixed_7a.branch7x7x3_1", 768, 192, (1, 1), 1, (0, 0)),
            ("Mixed_7a.branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
            ("Mixed_7a.branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)),
            ("Mixed_7a.branch7x7x3_4", 192, 192, (3, 3), 2, (0, 0))]
         + _e("Mixed_7b", 1280) + _e("Mixed_7c", 2048))
SPEC = {u[0]: u for u in UNITS}
#: torchvision's inception_v3 has 27,161,264 parameters; less the auxiliary head (3,326,696 with 1000
#: classes) plus 8 more classes in fc (8 * 2049) is the FID network's count
FID_PARAM_COUNT = 27_161_264 - 3_326_696 + 8 * 2049


def random_fid_state(seed: int = 0, counters: bool = True) -> dict[str, torch.Tensor]:
    """A random state dict in the published file's layout (He-scaled convs, non-trivial BatchNorm)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, cin, cout, (kh, kw), _, _ in UNITS:
        sd[f"{name}.conv.weight"] = torch.randn(cout, cin, kh, kw, generator=g) * math.sqrt(2.0 / (cin * kh * kw))
        sd[f"{name}.bn.weight"] = 1 + 0.1 * torch.randn(cout, generator=g)
        sd[f"{name}.bn.bias"] = 0.1 * torch.randn(cout, generator=g)
        sd[f"{name}.bn.running_mean"] = 0.1 * torch.randn(cout, generator=g)
        sd[f"{name}.bn.running_var"] = 0.5 + torch.rand(cout, generator=g)
        if counters:
            sd[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    sd["fc.weight"] = 0.01 * torch.randn(1008, 2048, generator=g)
    sd["fc.bias"] = torch.zeros(1008)
    return sd


# ------------------------------------------------------------------ an independent functional forward

def _unit(sd, name, x):
    _, _, _, _, stride, pad = SPEC[name]
    x = F.conv2d(x, sd[f"{name}.conv.weight"], stride=stride, padding=pad)
    x = F.batch_norm(x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"], sd[f"{name}.bn.weight"],
                     sd[f"{name}.bn.bias"], training=False, eps=1e-3)
    return x.clamp_min(0)


def _chain(sd, block, names, x):
    for n in names:
        x = _unit(sd, f"{block}.{n}", x)
    return x


def _avg_valid(x):
    """3x3 / 1 average over the in-image neighbours only: zero-padded sum / number of real pixels."""
    s = F.conv2d(F.pad(x, (1, 1, 1, 1)), torch.ones(x.shape[1], 1, 3, 3), groups=x.shape[1])
    cnt = F.conv2d(F.pad(torch.ones(1, 1, *x.shape[2:]), (1, 1, 1, 1)), torch.ones(1, 1, 3, 3))
    return s / cnt


def _max3(x):
    """3x3 / 1 max with -inf padding, from shifted copies."""
    p = F.pad(x, (1, 1, 1, 1), value=-math.inf)
    h, w = x.shape[2:]
    return torch.stack([p[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)]).amax(0)


def _block_a(sd, b, x):
    return torch.cat([_chain(sd, b, ["branch1x1"], x), _chain(sd, b, ["branch5x5_1", "branch5x5_2"], x),
                      _chain(sd, b, ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], x),
                      _unit(sd, f"{b}.branch_pool", _avg_valid(x))], 1)


def _block_c(sd, b, x):
    return torch.cat([_chain(sd, b, ["branch1x1"], x),
                      _chain(sd, b, [f"branch7x7_{i}" for i in (1, 2, 3)], x),
                      _chain(sd, b, [f"branch7x7dbl_{i}" for i in (1, 2, 3, 4, 5)], x),
                      _unit(sd, f"{b}.branch_pool", _avg_valid(x))], 1)


def _block_e(sd, b, x, pool):
    t = _unit(sd, f"{b}.branch3x3_1", x)
    u = _chain(sd, b, ["branch3x3dbl_1", "branch3x3dbl_2"], x)
    return torch.cat([_unit(sd, f"{b}.branch1x1", x),
                      _unit(sd, f"{b}.branch3x3_2a", t), _unit(sd, f"{b}.branch3x3_2b", t),
                      _unit(sd, f"{b}.branch3x3dbl_3a", u), _unit(sd, f"{b}.branch3x3dbl_3b", u),
                      _unit(sd, f"{b}.branch_pool", pool(x))], 1)


def reference_pool3(sd, images01: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's recipe by hand: bilinear to 299, 2x - 1, the graph, global average pool."""
    x = 2 * F.interpolate(images01, size=(299, 299), mode="bilinear", align_corners=False) - 1
    for n in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
        x = _unit(sd, n, x)
    x = F.max_pool2d(x, 3, 2)
    x = F.max_pool2d(_unit(sd, "Conv2d_4a_3x3", _unit(sd, "Conv2d_3b_1x1", x)), 3, 2)
    for b in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = _block_a(sd, b, x)
    x = torch.cat([_unit(sd, "Mixed_6a.branch3x3", x),
                   _chain(sd, "Mixed_6a", ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], x),
                   F.max_pool2d(x, 3, 2)], 1)
    for b in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = _block_c(sd, b, x)
    x = torch.cat([_chain(sd, "Mixed_7a", ["branch3x3_1", "branch3x3_2"], x),
                   _chain(sd, "Mixed_7a", [f"branch7x7x3_{i}" for i in (1, 2, 3, 4)], x),
                   F.max_pool2d(x, 3, 2)], 1)
    x = _block_e(sd, "Mixed_7b", x, _avg_valid)
    x = _block_e(sd, "Mixed_7c", x, _max3)
    return x.mean((2, 3))


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def inception_state() -> dict[str, torch.Tensor]:
    return random_fid_state(0)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory, inception_state) -> Path:
    p = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(inception_state, p)
    return p


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return build_tiny_weights(tmp_path_factory.mktemp("w"))


IDS = [0, 1, 2, 2001, 2002]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A CelebAMask-HQ-layout tree (64-px photos, part masks) with MM-CelebA-HQ captions in mm/text/."""
    root = tmp_path_factory.mktemp("CelebAMask-HQ")
    (root / "CelebA-HQ-img").mkdir()
    (root / "mm" / "text").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for image_id in IDS:
        labels = np.zeros((64, 64), np.uint8)
        r = rng.integers(16, 24)
        labels[(yy - 32) ** 2 + (xx - 32) ** 2 < (r + 6) ** 2] = 13
        labels[(yy - 34) ** 2 + (xx - 32) ** 2 < r ** 2] = 1
        labels[28:31, 24:28] = 4
        labels[28:31, 36:40] = 5
        photo = np.stack([labels * 12 + 40, labels * 7 + 30, 200 - labels * 9], -1).astype(np.uint8)
        photo = np.clip(photo + rng.integers(0, 20, photo.shape), 0, 255).astype(np.uint8)
        Image.fromarray(photo).save(root / "CelebA-HQ-img" / f"{image_id}.jpg", quality=95)
        write_part_masks(labels, root / "CelebAMask-HQ-mask-anno", image_id)
        (root / "mm" / "text" / f"{image_id}.txt").write_text(
            "".join(f"This person has {('blond', 'black', 'brown')[c % 3]} hair and is smiling.\n" for c in range(10)))
    return root


# ------------------------------------------------------------------ the network and its loader

def test_table_is_the_published_parameter_count(inception_state):
    from mm2latent.models.inception import InceptionV3

    learned = sum(v.numel() for k, v in inception_state.items() if not k.endswith(("running_mean", "running_var",
                                                                                    "num_batches_tracked")))
    assert learned == FID_PARAM_COUNT
    own = InceptionV3().state_dict()
    assert set(own) == set(inception_state)
    assert all(tuple(own[k].shape) == tuple(v.shape) for k, v in inception_state.items())


def test_fid_blocks_match_the_independent_forward(inception_state):
    """Block by block, at small sizes: the FID-specific A, C, E1 (avg pool without padding) and E2 (max pool)."""
    from mm2latent.models.inception import InceptionV3

    net = InceptionV3()
    net.load_state_dict(inception_state)
    net.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block, cin, ref in (("Mixed_5b", 192, lambda x: _block_a(inception_state, "Mixed_5b", x)),
                                ("Mixed_6b", 768, lambda x: _block_c(inception_state, "Mixed_6b", x)),
                                ("Mixed_7b", 1280, lambda x: _block_e(inception_state, "Mixed_7b", x, _avg_valid)),
                                ("Mixed_7c", 2048, lambda x: _block_e(inception_state, "Mixed_7c", x, _max3))):
            x = torch.randn(2, cin, 8, 8, generator=g).clamp_min(0)
            got = getattr(net, block)(x)
            torch.testing.assert_close(got, ref(x), rtol=1e-4, atol=1e-4)
        # and the variant matters: torchvision's pooling (padding counted; average in Mixed_7c) differs
        x = torch.randn(1, 2048, 8, 8, generator=g).clamp_min(0)
        tv = _block_e(inception_state, "Mixed_7c", x, lambda t: F.avg_pool2d(t, 3, 1, 1))
        assert (net.Mixed_7c(x) - tv).abs().max() > 1e-3
        x = torch.randn(1, 192, 8, 8, generator=g).clamp_min(0)
        tv = torch.cat([_chain(inception_state, "Mixed_5b", ["branch1x1"], x),
                        _chain(inception_state, "Mixed_5b", ["branch5x5_1", "branch5x5_2"], x),
                        _chain(inception_state, "Mixed_5b", ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], x),
                        _unit(inception_state, "Mixed_5b.branch_pool", F.avg_pool2d(x, 3, 1, 1))], 1)
        assert (net.Mixed_5b(x) - tv).abs().max() > 1e-4


def test_loaded_file_reproduces_the_independent_forward(inception_file, inception_state):
    from mm2latent.models.inception import load_fid_inception

    net = load_fid_inception(inception_file)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = net.features(x)
        want = reference_pool3(inception_state, x)
        blocks = net.blocks(x, last=3)
    assert got.shape == (2, 2048) and torch.isfinite(got).all() and got.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert [tuple(b.shape[1:]) for b in blocks[:3]] == [(64, 73, 73), (192, 35, 35), (768, 17, 17)]
    torch.testing.assert_close(blocks[3], got)


def test_loader_accepts_legacy_format_without_batch_counters(tmp_path):
    """The release predates torch 1.6: also an OrderedDict in the legacy (non-zip) torch.save format,
    with or without BatchNorm's num_batches_tracked counters."""
    from collections import OrderedDict

    from mm2latent.models.inception import load_fid_inception

    sd = OrderedDict(random_fid_state(3, counters=False))
    p = tmp_path / "legacy_no_counters.pth"
    torch.save(sd, p, _use_new_zipfile_serialization=False)
    net = load_fid_inception(p)
    for k, v in sd.items():
        torch.testing.assert_close(net.state_dict()[k], v)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loader_refuses_malicious_and_wrong_files(tmp_path, inception_file, inception_state):
    from mm2latent.models.inception import load_fid_inception

    marker = tmp_path / "pwned"
    evil_zip, evil_legacy, evil_pickle = tmp_path / "evil.pth", tmp_path / "evil_legacy.pth", tmp_path / "evil.pkl"
    torch.save({"fc.weight": _Evil(marker)}, evil_zip)
    torch.save({"fc.weight": _Evil(marker)}, evil_legacy, _use_new_zipfile_serialization=False)
    evil_pickle.write_bytes(pickle.dumps(_Evil(marker)))
    for p in (evil_zip, evil_legacy, evil_pickle):
        with pytest.raises(UserError, match="refusing") as e:
            load_fid_inception(p)
        assert "\n" not in str(e.value)
    assert not marker.exists()

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(inception_file.read_bytes()[: 1 << 20])
    bad_shape = {**inception_state, "Mixed_7c.branch_pool.conv.weight": torch.zeros(192, 2048, 3, 3)}
    missing = {k: v for k, v in inception_state.items() if not k.startswith("Mixed_7c.")}
    nan = {**inception_state, "fc.bias": torch.full((1008,), float("nan"))}
    cases = {"truncated": (None, "truncated or corrupt|not a readable"),
             "bad_shape": (bad_shape, "Mixed_7c.branch_pool.conv.weight has shape"),
             "missing": (missing, "missing"), "nested": ({"state_dict": inception_state}, "not named tensors"),
             "nan": (nan, "NaN"), "empty": ({}, "missing")}
    for name, (obj, msg) in cases.items():
        p = truncated if obj is None else tmp_path / f"{name}.pth"
        if obj is not None:
            torch.save(obj, p)
        with pytest.raises(UserError, match=msg) as e:
            load_fid_inception(p)
        assert "\n" not in str(e.value), name
    with pytest.raises(UserError):
        load_fid_inception(tmp_path / "absent.pth")


# ------------------------------------------------------------------ Fréchet distance

def test_frechet_distance_closed_form():
    from mm2latent.eval.real import fid
    from mm2latent.eval.realism import frechet_distance, frechet_distance_from_stats, frechet_distance_lowrank

    rng = np.random.default_rng(0)
    # diagonal covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    a, b = rng.uniform(0.2, 2, 4), rng.uniform(0.2, 2, 4)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-9)
    # a full covariance and a scaled copy: tr sqrt(S k^2 S) = k tr S, so FD = |dmu|^2 + (1 - k)^2 tr S
    m = rng.normal(size=(4, 4))
    s = m @ m.T + 0.1 * np.eye(4)
    k = 1.7
    want = ((mu1 - mu2) ** 2).sum() + (1 - k) ** 2 * np.trace(s)
    assert frechet_distance_from_stats(mu1, s, mu2, k * k * s) == pytest.approx(want, rel=1e-8)
    # samples of those Gaussians: the sample estimate converges to the closed form
    x = rng.multivariate_normal(mu1, s, size=200_000)
    y = rng.multivariate_normal(mu2, k * k * s, size=200_000)
    assert frechet_distance(x, y) == pytest.approx(want, rel=0.02)
    # the low-rank identity is the same number as the matrix square root, with fewer and more samples than dims
    for n, d in ((10, 40), (60, 5)):
        p, q = rng.normal(size=(n, d)), 0.5 + 1.3 * rng.normal(size=(n + 3, d))
        assert frechet_distance_lowrank(p, q) == pytest.approx(frechet_distance(p, q), rel=1e-6, abs=1e-8)
        assert fid(p, q) == pytest.approx(frechet_distance(p, q), rel=1e-6, abs=1e-8)
    assert frechet_distance_lowrank(x[:50], x[:50]) == pytest.approx(0.0, abs=1e-8)


def test_feature_distance_and_encoder_tokens():
    from helpers import tiny_clip
    from mm2latent.eval.real import encoder_block_tokens, feature_distance

    enc = tiny_clip().eval()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    tokens, emb = encoder_block_tokens(enc, x)
    with torch.no_grad():
        torch.testing.assert_close(emb, enc.encode_image(x, normalize=False))
    assert len(tokens) == len(enc.visual.transformer.resblocks) and tokens[0].shape == (3, 4, 64)
    same = feature_distance(tokens, tokens)
    assert torch.equal(same, torch.zeros(3))
    other, _ = encoder_block_tokens(enc, x.flip(0))
    d = feature_distance(tokens, other)
    assert (d[[0, 2]] > 0).all() and d[1] == 0  # the middle image is its own flip partner
    maps = [torch.rand(2, 8, 5, 5, generator=g)]
    want = (F.normalize(maps[0], dim=1) - F.normalize(maps[0].flip(0), dim=1)).square().sum(1).mean((1, 2))
    torch.testing.assert_close(feature_distance(maps, [maps[0].flip(0)]), want)


# ------------------------------------------------------------------ end to end

def _run(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_eval_real_end_to_end(weights, tree, inception_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MM2LATENT_NO_PROGRESS", "1")
    out = tmp_path / "report.json"
    argv = ["eval", "real", "--weights", str(weights), "--photos", str(tree), "--captions", str(tree / "mm"),
            "--inception", str(inception_file), "--num", "4", "--batch", "3", "--out", str(out)]
    rc, stdout, err = _run(argv, capsys)
    assert rc == 0, err
    assert "Inception FID" in stdout and "report:" in stdout
    r = json.loads(out.read_text())
    assert r["num"] == 4 and r["resolution"] == 32 and r["photos"]["layout"] == "CelebAMaskHQ"
    assert r["generation_inputs"]["caption+annotated_mask"] == 4
    assert r["photos"]["with_captions"] == 4 and r["photos"]["with_annotated_masks"] == 4
    f = r["fid"]
    assert f["inception"] is True and f["features"].startswith("FID Inception-v3")
    for key in ("generated_vs_photos", "reference: inversions_vs_photos", "reference: photos_half_vs_half"):
        assert math.isfinite(f[key]) and f[key] > -1e-6, key
    t = r["text_image_score"]
    assert t["num"] == 4 and all(-1 <= t[k] <= 1 for k in ("generated_with_its_caption",
                                                           "reference: photo_with_its_caption",
                                                           "chance: generated_with_another_photos_caption"))
    m = r["mask_miou"]
    assert m["num"] == 4 and 0 <= m["generated_vs_input_masks"] <= 1
    assert 0 <= m["ceiling: parser_on_photos_vs_annotations"] <= 1
    inv = r["inversion"]
    assert inv["method"] == "w" and inv["num"] == 4 and math.isfinite(inv["psnr"]) and -1 <= inv["ssim"] <= 1
    pd = inv["perceptual_distance"]
    assert pd["value"] >= 0 and "not LPIPS" in pd["name"] and "Inception" in pd["network"]

    # the same seed gives the same report; another seed other faces
    out2 = tmp_path / "again.json"
    rc, _, err = _run(argv[:-1] + [str(out2)], capsys)
    assert rc == 0, err
    assert out2.read_text() == out.read_text()
    out3 = tmp_path / "seed1.json"
    rc, _, err = _run(argv[:-1] + [str(out3), "--seed", "1"], capsys)
    assert rc == 0, err
    r3 = json.loads(out3.read_text())
    assert r3["fid"]["generated_vs_photos"] != f["generated_vs_photos"]
    assert r3["inversion"] == inv  # inversion does not depend on the seed


def test_eval_real_without_inception_or_captions(weights, tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MM2LATENT_NO_PROGRESS", "1")
    out = tmp_path / "r.json"
    rc, stdout, err = _run(["eval", "real", "--weights", str(weights), "--photos", str(tree), "--num", "5",
                            "--out", str(out)], capsys)
    assert rc == 0, err
    assert "not Inception" in stdout
    r = json.loads(out.read_text())
    assert r["fid"]["inception"] is False and "NOT Inception" in r["fid"]["features"]
    assert r["generation_inputs"]["own_image_embedding+annotated_mask"] == 5
    assert r["text_image_score"]["num"] == 0 and "captions" in r["text_image_score"]["skipped"]
    assert r["mask_miou"]["num"] == 5
    assert "transformer blocks" in r["inversion"]["perceptual_distance"]["network"]
    # a plain photo folder: no annotated masks, the parser's masks are the generation inputs
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in IDS[:3]:
        (folder / f"{i}.jpg").write_bytes((tree / "CelebA-HQ-img" / f"{i}.jpg").read_bytes())
    rc, _, err = _run(["eval", "real", "--weights", str(weights), "--photos", str(folder), "--out",
                       str(tmp_path / "f.json")], capsys)
    assert rc == 0, err
    r = json.loads((tmp_path / "f.json").read_text())
    assert r["num"] == 3 and r["generation_inputs"]["own_image_embedding+parsed_mask"] == 3
    assert r["mask_miou"]["num"] == 0


def test_eval_real_refusals(weights, tree, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": _Evil(marker)}, evil)
    base = ["eval", "real", "--weights", str(weights), "--out", str(tmp_path / "r.json")]
    cases = [(["--photos", str(tree), "--num", "1"], "at least 2"),
             (["--photos", str(tmp_path / "nowhere")], "not a folder"),
             (["--photos", str(tree), "--captions", str(tree)], "no text/"),
             (["--photos", str(tree), "--inception", str(evil)], "refusing"),
             (["--photos", str(tree), "--inception", str(tmp_path / "absent.pth")], "absent.pth")]
    for extra, msg in cases:
        rc, _, err = _run(base + extra, capsys)
        assert rc == 2 and msg in err, (extra, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not marker.exists() and not (tmp_path / "r.json").exists()
    with pytest.raises(SystemExit) as e:  # argparse: a missing required option
        main(["eval", "real", "--photos", str(tree)])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
