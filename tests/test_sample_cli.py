"""``mm2latent sample`` with a small random generator: files, latents, determinism, errors."""

import hashlib
import subprocess
import sys

import numpy as np
import torch

from mm2latent.models.stylegan2 import Generator, StyleGAN2Config, save_generator

CLI = [sys.executable, "-m", "mm2latent.cli.main"]


def _tiny_generator(path):
    torch.manual_seed(0)
    cfg = StyleGAN2Config(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channels={4: 32, 8: 32, 16: 16})
    G = Generator(cfg)
    save_generator(path, G)
    return G


def test_sample_writes_images_and_latents_deterministically(tmp_path):
    _tiny_generator(tmp_path / "g")
    outs = []
    for name in ("a", "b"):
        r = subprocess.run(CLI + ["sample", "--num", "5", "--seed", "3", "--weights", str(tmp_path / "g.safetensors"),
                                  "--out", str(tmp_path / name), "--grid", str(tmp_path / f"{name}.png")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / name).iterdir()})
    assert outs[0] == outs[1] and len(outs[0]) == 6
    w = np.load(tmp_path / "a" / "latents.npy")
    assert w.shape == (5, 32)


def test_sample_truncation_zero_gives_w_avg(tmp_path):
    from mm2latent.cli.sample import sample_generator

    G = _tiny_generator(tmp_path / "g").eval()
    _, w = sample_generator(G, 4, 0, 0.0)
    assert np.allclose(w, G.w_avg.numpy()[None], atol=1e-6)


def test_sample_errors(tmp_path):
    r = subprocess.run(CLI + ["sample", "--num", "2", "--weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(CLI + ["sample", "--num", "0", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
