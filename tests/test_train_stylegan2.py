"""StyleGAN2 trainer: 2-process gloo sync, SIGKILL + bit-exact resume, corrupt-checkpoint
fallback, disk-full handling, DiffAugment and data order. Tiny 16px models, single thread."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import sigkill_when
from mm2latent.common.errors import UserError
from mm2latent.train import stylegan2 as tr
from mm2latent.train import state as st
from mm2latent.train.state import list_checkpoints
from mm2latent.train.state import DataOrder
from mm2latent.train.stylegan2 import TRAIN_KIND, TensorSource, TrainOptions, diff_augment, train_stylegan2

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--size", "16", "--batch", "4", "--channels", "16,16,8", "--z-dim", "16", "--w-dim", "16",
        "--mapping-layers", "2", "--r1-every", "4", "--pl-weight", "2", "--pl-every", "3",
        "--augment", "translation,color,cutout", "--sample-every", "0", "--ckpt-minutes", "0", "--threads", "1"]



@pytest.fixture(scope="module")
def png_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    for i in range(24):
        a = np.zeros((16, 16, 3), np.uint8)
        r = rng.integers(3, 7)
        a[(yy - 8) ** 2 + (xx - 8) ** 2 < r * r] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(d / f"{i:03d}.png")
    return d


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MM2LATENT_NO_PROGRESS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(out, data, *extra):
    return [sys.executable, "-m", "mm2latent.cli.main", "train", "stylegan2", "--out", str(out), "--data", str(data),
            *TINY, *extra]


def _run(cmd, timeout=120):
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def read_checkpoint(stem):
    return st.read_checkpoint(stem, TRAIN_KIND)


def latest_good_checkpoint(run_dir):
    return st.latest_good_checkpoint(run_dir, TRAIN_KIND)


def _final(run_dir):
    stems = list_checkpoints(Path(run_dir))
    return stems[0], *read_checkpoint(stems[0])


def _assert_same(a: dict, b: dict, skip=()):
    assert set(a) == set(b)
    diff = [k for k in a if not k.startswith(skip) and not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:5]}"


# --------------------------------------------------------------------------- exact resume


def test_sigkill_then_resume_is_bit_exact(tmp_path, png_dir):
    # uninterrupted reference: 24 steps
    ref = tmp_path / "ref"
    _run(_cli(ref, png_dir, "--kimg", "0.096", "--ckpt-every", "6"))
    stem, ref_t, ref_m = _final(ref)
    assert ref_m["step"] == 24 and stem.name == "ckpt-000000024"
    assert len(list_checkpoints(ref)) == 2  # newest + previous good

    # same run with a far-away target, killed hard once a checkpoint exists
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli(run, png_dir, "--kimg", "100", "--ckpt-every", "6"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sigkill_when(proc, lambda: bool(list_checkpoints(run)), timeout=90)
    killed_at = latest_good_checkpoint(run)[2]["step"]
    assert 6 <= killed_at < 24

    # resume to the reference target: everything identical (models, EMA, Adam, RNG states, data position)
    p = _run(_cli(run, png_dir, "--kimg", "0.096", "--ckpt-every", "6", "--resume"))
    assert f"from step {killed_at}" in p.stderr
    _, res_t, res_m = _final(run)
    assert res_m["step"] == 24 and res_m["data"] == ref_m["data"]
    _assert_same(ref_t, res_t)
    assert ref_m["optG"] == res_m["optG"] and ref_m["optD"] == res_m["optD"]

    # a damaged latest checkpoint: warn, fall back to the previous one, and still end identical
    newest = stem.with_suffix(".safetensors")
    blob = bytearray(newest.read_bytes())
    blob[-100] ^= 0xFF
    newest.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="checksum"):
        read_checkpoint(stem)
    p = _run(_cli(ref, png_dir, "--kimg", "0.096", "--ckpt-every", "6", "--resume"))
    assert "warning" in p.stderr and "falling back" in p.stderr and "from step 18" in p.stderr
    _, again_t, _ = _final(ref)
    _assert_same(res_t, again_t)


# --------------------------------------------------------------------------- distributed

WORKER = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import save_file
    from mm2latent.train.stylegan2 import TrainOptions, train_stylegan2
    out, data = sys.argv[1], sys.argv[2]
    opts = TrainOptions(out=out, data=data, size=16, batch=4, kimg=0.048, z_dim=16, w_dim=16, mapping_layers=2,
                        channels=[16, 16, 8], pl_weight=2.0, pl_every=4, r1_every=4, ckpt_every=6,
                        ckpt_minutes=0, sample_every=0, augment="translation,color", threads=1)
    t = train_stylegan2(opts)
    sd = {"rng_torch": torch.get_rng_state(), "local_batch": torch.tensor(t.local_batch)}
    for name, m in (("G", t.G), ("D", t.D), ("G_ema", t.G_ema)):
        sd.update({f"{name}.{k}": v.detach().contiguous() for k, v in m.state_dict().items()})
    save_file(sd, f"{out}/rank{t.env.rank}.safetensors")
""")


def test_two_gloo_processes_stay_in_sync(tmp_path, png_dir):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(script), str(out), str(png_dir)]
    _run(cmd, timeout=180)
    r0, r1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert int(r0["local_batch"]) == 2
    params = [k for k in r0 if k.startswith(("G.", "D.", "G_ema."))]
    assert len(params) > 50
    _assert_same({k: r0[k] for k in params}, {k: r1[k] for k in params})
    assert not torch.equal(r0["rng_torch"], r1["rng_torch"])  # each rank draws its own latents/noise
    # the checkpoint holds both ranks' RNG states and the trained parameters
    _, t, m = _final(out)
    assert m["world_size"] == 2 and m["step"] == 12
    assert torch.equal(t["rng.0.torch"], r0["rng_torch"]) and torch.equal(t["rng.1.torch"], r1["rng_torch"])
    assert torch.equal(t["G.mapping.fcs.0.weight"], r0["G.mapping.fcs.0.weight"])
    # training moved the weights away from the (shared) initialisation
    torch.manual_seed(0)
    from mm2latent.models.stylegan2 import Generator

    init = Generator(TrainOptions(out="x", size=16, z_dim=16, w_dim=16, mapping_layers=2,
                                  channels=[16, 16, 8]).model_config())
    key = "synthesis.blocks.2.conv1.weight"
    assert not torch.equal(init.state_dict()[key], r0["G." + key])


# --------------------------------------------------------------------------- in-process behaviour


def _opts(out, **kw):
    base = dict(out=str(out), size=16, batch=4, kimg=0.032, z_dim=16, w_dim=16, mapping_layers=2,
                channels=[16, 16, 8], r1_every=4, sample_every=0, ckpt_minutes=0)
    base.update(kw)
    return TrainOptions(**base)


def _data(n=12):
    g = torch.Generator().manual_seed(0)
    return TensorSource(torch.rand(n, 3, 16, 16, generator=g) * 2 - 1)


def test_outputs_and_refusals(tmp_path, png_dir, capsys):
    run = tmp_path / "run"
    t = train_stylegan2(_opts(run, ckpt_every=4, sample_every=4, data=str(png_dir)))
    assert t.step == 8 and t.nimg == 32
    assert (run / "generator.safetensors").exists() and (run / "samples" / "step-000000008.png").exists()
    from mm2latent.models.stylegan2 import load_generator

    G = load_generator(run / "generator")
    with torch.no_grad():
        torch.testing.assert_close(G(torch.zeros(1, 16), noise_mode="const"),
                                   t.G_ema(torch.zeros(1, 16), noise_mode="const"))
    with pytest.raises(UserError, match="--resume"):
        train_stylegan2(_opts(run, data=str(png_dir)))
    with pytest.raises(UserError, match="power of two"):
        _opts(tmp_path / "a", size=24).validate()
    with pytest.raises(UserError, match="widths"):
        _opts(tmp_path / "a", channels=[8, 8]).validate()
    with pytest.raises(UserError, match="augmentation"):
        _opts(tmp_path / "a", augment="zoom").validate()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no .png"):
        train_stylegan2(_opts(tmp_path / "b", data=str(empty)))
    from mm2latent.cli.main import main

    assert main(["train", "stylegan2", "--out", str(tmp_path / "c"), "--data", str(png_dir), "--size", "48"]) == 2
    assert "power of two" in capsys.readouterr().err


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch, capsys):
    from mm2latent.train import state

    run = tmp_path / "run"
    real_save = state.save_checkpoint
    calls = {"n": 0}

    def flaky(path, tensors, config):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_save(path, tensors, config)

    monkeypatch.setattr(state, "save_checkpoint", flaky)
    train_stylegan2(_opts(run, kimg=0.048, ckpt_every=4), source=_data())
    err = capsys.readouterr().err
    assert "No space left" in err and "previous checkpoint is kept" in err
    steps = [read_checkpoint(s)[1]["step"] for s in list_checkpoints(run)]
    assert steps == [12, 4]  # step 8 failed; 4 stayed intact and readable

    def broken(path, tensors, config):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state, "save_checkpoint", broken)
    with pytest.raises(UserError, match="No space left"):
        train_stylegan2(_opts(tmp_path / "r2", kimg=0.016), source=_data())


def test_resume_with_no_checkpoint_starts_fresh_and_world_size_is_checked(tmp_path, capsys):
    run = tmp_path / "run"
    t = train_stylegan2(_opts(run, resume=True), source=_data())
    assert t.step == 8 and "starting a new run" in capsys.readouterr().err
    _, tensors, meta = latest_good_checkpoint(run)
    meta = dict(meta, world_size=2)
    t2 = tr.StyleGAN2Trainer(_opts(run), source=_data())
    with pytest.raises(UserError, match="same number"):
        t2.load_state(tensors, meta)


def test_diff_augment_properties():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16, requires_grad=True)
    for policy in (["translation"], ["color"], ["cutout"], ["translation", "color", "cutout"]):
        y = diff_augment(x, policy)
        assert y.shape == x.shape
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    ones = torch.ones(64, 3, 16, 16)
    cut = diff_augment(ones, ["cutout"])
    frac = 1 - cut.mean().item()
    assert 0.15 < frac < 0.26  # an 8x8 hole (clipped at borders) in a 16x16 image
    moved = diff_augment(ones, ["translation"])
    assert (moved == 0).any() and set(moved.unique().tolist()) <= {0.0, 1.0}
    torch.manual_seed(1)
    a = diff_augment(x.detach(), ["translation", "color", "cutout"])
    torch.manual_seed(1)
    b = diff_augment(x.detach(), ["translation", "color", "cutout"])
    assert torch.equal(a, b)


def test_data_order_is_a_resumable_permutation():
    o = DataOrder(10, seed=3)
    first = o.take(10)
    assert sorted(first) == list(range(10)) and (o.epoch, o.cursor) == (1, 0)
    nxt = o.take(4)
    again = DataOrder(10, seed=3, epoch=1, cursor=0).take(4)
    assert nxt == again and nxt != first[:4]
    o2 = DataOrder(10, seed=3)
    assert o2.take(7) + o2.take(7) == first + DataOrder(10, seed=3, epoch=1).take(4)
    # the perception trainers' stream: the order their checkpoints were written with
    from mm2latent.common.seeding import numpy_rng

    perception = DataOrder(10, seed=3, stream=0xDA7A).take(13)
    expected = list(numpy_rng(3, 0xDA7A, 0).permutation(10)) + list(numpy_rng(3, 0xDA7A, 1).permutation(10)[:3])
    assert perception == [int(i) for i in expected] and perception[:10] != first


def test_world_cache_directory_and_world_source(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    arr = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    np.save(cache / "images.npy", arr)
    src = tr.open_source(str(cache), 16)
    assert isinstance(src, tr.NpyImagesSource) and len(src) == 10
    x = src.images([3, 1])
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x[0], torch.from_numpy(arr[3]).permute(2, 0, 1).float() / 127.5 - 1)
    t = train_stylegan2(_opts(tmp_path / "run", data=str(cache), kimg=0.008))
    assert t.step == 2
    with pytest.raises(UserError, match="--size is 32"):
        tr.open_source(str(cache), 32)
    pytest.importorskip("mm2latent.world.dataset")
    world = tr.open_source("world", 64, world_length=5)
    imgs = world.images([0, 4])
    assert len(world) == 5 and imgs.shape == (2, 3, 64, 64) and -1 <= imgs.min() and imgs.max() <= 1
    assert torch.equal(world.images([4]), imgs[1:])  # cached and fresh renders agree
