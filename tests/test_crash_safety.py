"""SIGKILL mid-run, then resume: every trainer ends bit-identical to an uninterrupted run.

(The StyleGAN2 and generator-AE trainers have their own kill tests; this file covers the
CLIP, perception and MappingNet trainers.) Each trainer checkpoints at every step here;
the newest checkpoint is also damaged before resuming (as if the kill hit it mid-write),
so the resume must fall back to the previous one with a warning.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import sigkill_when
from mm2latent.train import state as st

WORKER = r"""
import sys, numpy as np, torch
torch.set_num_threads(1)
which, out, data, resume = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
torch.manual_seed(0)
if which == "clip":
    from mm2latent.train.clip import CLIPTrainOptions, train_clip
    tiny = dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=1, transformer_layers=1)
    train_clip(CLIPTrainOptions(data=data, out=out, steps=14, batch=8, lr=2e-3, warmup=2, ckpt_every=1,
                                config=tiny), resume=resume)
elif which == "perception":
    from mm2latent.train.perception import PerceptionTrainOptions, train_perception
    train_perception(PerceptionTrainOptions(task="mask_ae", data=data, out=out, steps=14, batch=8, warmup=2,
                     log_every=1, ckpt_minutes=1e-9,
                     model={"base": 4, "max_width": 16, "latent_dim": 32, "bottom": 4}), resume=resume, quiet=True)
else:
    from mm2latent.train.mapping import MappingTrainOptions, train_mapping
    rng = np.random.default_rng(0)
    n = 96
    d = {"w": rng.normal(size=(n, 8)).astype(np.float32), "mask": np.zeros((n, 4, 4), np.uint8)}
    for k in ("image_emb", "mask_emb", "sketch_emb", "coeff_emb"):
        d[k] = rng.normal(size=(n, 12)).astype(np.float32)
    train_mapping(MappingTrainOptions(data="synthetic", out=out, steps=14, batch=16, hidden=16, layers=3,
                                      ckpt_minutes=1e-9, resume=resume), data=d)
"""
KINDS = {"clip": "clip-train", "perception": "train_mask_ae", "mapping": "mapping-net-train"}


def _checkpoints(which, run):
    """(step, path of the .safetensors) newest first."""
    return [(int(s.name[5:]), s.with_suffix(".safetensors")) for s in st.list_checkpoints(run)]


def _read(which, path):
    return st.read_checkpoint(path.with_suffix(""), KINDS[which])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from mm2latent.world.cache import build_cache

    return build_cache(tmp_path_factory.mktemp("c") / "cache", "val", num=24, size=64, workers=1)


def _run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", MM2LATENT_NO_PROGRESS="1")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("which", ["clip", "perception", "mapping"])
def test_sigkill_and_damaged_checkpoint_then_exact_resume(which, cache, tmp_path):
    script = tmp_path / "w.py"
    script.write_text(WORKER)
    ref = tmp_path / "ref"
    r = _run([sys.executable, str(script), which, str(ref), str(cache), "0"])
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MM2LATENT_NO_PROGRESS="1")
    proc = subprocess.Popen([sys.executable, str(script), which, str(run), str(cache), "0"], env=env,
                            stderr=subprocess.PIPE)
    sigkill_when(proc, lambda: bool((found := _checkpoints(which, run)) and found[0][0] >= 5), timeout=120, poll=0.005)
    killed_at, newest = _checkpoints(which, run)[0]
    assert killed_at < 14, "the run finished before it could be killed"
    blob = bytearray(newest.read_bytes())
    blob[-20] ^= 0xFF
    newest.write_bytes(bytes(blob))
    r = _run([sys.executable, str(script), which, str(run), str(cache), "1"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "falling back" in r.stderr  # warned (torn pair or failed checksum) and fell back
    (sa, pa), (sb, pb) = _checkpoints(which, ref)[0], _checkpoints(which, run)[0]
    assert sa == sb == 14
    a, b = _read(which, pa), _read(which, pb)
    assert set(a[0]) == set(b[0])
    for k in a[0]:
        if "numpy" in k or "python" in k:  # unseeded global RNGs that training never draws from
            continue
        assert torch.equal(a[0][k], b[0][k]), k
