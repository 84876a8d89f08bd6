"""Shared builders for tests: a complete weights directory of tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import torch

S = 32
TINY = {
    "parser": {"base": 4, "depth": 3, "max_width": 16, "size": S},
    "analyzer": {"stem": 8, "widths": [16, 16], "hidden": 32, "size": S},
    "mask_ae": {"base": 4, "max_width": 16, "latent_dim": 32, "bottom": 4, "size": S},
    "sketch_ae": {"base": 4, "max_width": 16, "latent_dim": 32, "bottom": 4, "size": S},
    "coeff_ae": {"hidden": 16, "latent_dim": 32},
}


def tiny_generator_config():
    from mm2latent.models.stylegan2 import StyleGAN2Config

    return StyleGAN2Config(resolution=S, z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8})


def tiny_clip():
    from mm2latent.models.clip import CLIP, CLIPConfig

    return CLIP(CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                           context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                           transformer_layers=1))


def build_tiny_weights(d: Path, data_dir: Path | None = None, run_dir: Path | None = None) -> Path:
    """Random tiny models for every component, MappingNet data from them and a MappingNet trained on it."""
    from mm2latent.models.clip import save_clip
    from mm2latent.models.inversion import ImageEncoder, ImageEncoderConfig
    from mm2latent.models.stylegan2 import Generator, save_generator
    from mm2latent.models.registry import build_model, save_module
    from mm2latent.train.mapping import MappingTrainOptions, train_mapping
    from mm2latent.train.mapping_data import generate_mapping_data

    d = Path(d)
    torch.manual_seed(0)
    for kind, cfg in TINY.items():
        save_module(build_model(kind, cfg), d / f"{kind}.safetensors")
    save_clip(tiny_clip().eval(), d / "encoder.safetensors")
    save_generator(d / "generator", Generator(tiny_generator_config()))
    save_module(ImageEncoder(ImageEncoderConfig(size=S, z_dim=16, widths=[8, 16, 16])), d / "image_encoder.safetensors")
    data = Path(data_dir) if data_dir else d / "_mapping_data"
    generate_mapping_data(data, num=40, weights=str(d), chunk=16, seed=3)
    run = Path(run_dir) if run_dir else d / "_mapping_run"
    train_mapping(MappingTrainOptions(data=str(data), out=str(run), steps=30, batch=16, text_noise_std=0.05),
                  export_to=str(d / "mapping_net.safetensors"))
    return d


def sigkill_when(proc, ready, timeout: float, poll: float = 0.02) -> None:
    """Wait until ``ready()`` (the process must stay alive meanwhile, within ``timeout`` s),
    then SIGKILL the process; it is killed in any case if the wait fails."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the process never got to the point where it is to be killed"
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


def write_world_cache(root: Path, num: int, size: int) -> Path:
    """A small world cache in the CachedWorldDataset format (train split, seed 0)."""
    import json

    import numpy as np

    from mm2latent.world.attributes import ATTRIBUTES
    from mm2latent.world.params import COEFF_NAMES
    from mm2latent.world.sample import make_sample

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ss = [make_sample(0, i, size, n_captions=0, n_heldout=0) for i in range(num)]
    np.save(root / "images.npy", np.stack([s.image for s in ss]))
    np.save(root / "masks.npy", np.stack([s.mask for s in ss]).astype(np.uint8))
    np.save(root / "sketches.npy", np.stack([(s.sketch < 128) for s in ss]).astype(np.uint8))
    np.save(root / "attributes.npy", np.stack([s.params.attr_vector() for s in ss]).astype(np.uint8))
    np.save(root / "coeffs.npy", np.stack([s.params.coeff_vector() for s in ss]).astype(np.float32))
    (root / "captions.json").write_text(json.dumps([[] for _ in ss]))
    (root / "meta.json").write_text(json.dumps({"split": "train", "seed": 0, "size": size, "num": num,
                                                "attributes": list(ATTRIBUTES), "coeffs": list(COEFF_NAMES)}))
    return root


REAL_SAMPLES_ENV = "MM2LATENT_REAL_SAMPLES"


def real_samples_dir() -> Path:
    """The real CelebAMask-HQ samples (masks-index/, masks-color/, photos/): ``$MM2LATENT_REAL_SAMPLES``,
    else ``../shared/eval/celebamask-hq`` beside the checkout. Tests that need them skip with a reason
    naming the variable (``make test`` reports skips with ``-rs``)."""
    env = os.environ.get(REAL_SAMPLES_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "eval" / "celebamask-hq"


REAL_SKIP_REASON = (f"real CelebAMask-HQ samples not found at {real_samples_dir()}; "
                    f"set {REAL_SAMPLES_ENV} to their folder")
