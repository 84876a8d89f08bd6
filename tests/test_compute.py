"""--device and --amp in every trainer (train/state.py: Compute). This machine has no GPU, so the
GPU is checked for its refusal; autocast runs here in bf16, the CPU's autocast dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY, tiny_clip, write_world_cache
from mm2latent.common.errors import UserError
from mm2latent.train.state import Compute

SIZE = 64


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_world_cache(tmp_path_factory.mktemp("cc") / "c", 24, SIZE)


def test_compute_options_and_refusals():
    c = Compute("cpu", "bf16")
    with c.autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16 and c.device.type == "cpu"
    with Compute("cpu").autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(UserError, match="--amp must be one of"):
        Compute("cpu", "fp8")
    with pytest.raises(UserError, match="fp16 needs --device cuda"):
        Compute("cpu", "fp16")
    with pytest.raises(UserError, match="--device must be"):
        Compute("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            Compute("cuda")
    # one step: backward, clipping, optimizer step
    lin = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    before = lin.weight.detach().clone()
    norm = c.step((lin(torch.ones(2, 3)) * 100).sum(), opt, clip=1.0)
    assert norm > 1.0 and not torch.equal(before, lin.weight)
    assert (lin.weight - before).norm() <= 0.1 + 1e-6  # the clipped gradient's step


def test_mapping_trains_under_bf16_autocast(tmp_path):
    from mm2latent.train.mapping import MappingTrainOptions, train_mapping

    rng = np.random.default_rng(0)
    d = {"w": rng.normal(size=(40, 8)).astype(np.float32), "mask": np.zeros((40, 4, 4), np.uint8)}
    for k in ("image_emb", "mask_emb", "sketch_emb", "coeff_emb"):
        d[k] = rng.normal(size=(40, 12)).astype(np.float32)
    tr = train_mapping(MappingTrainOptions(data="synthetic", out=str(tmp_path / "m"), steps=3, batch=16, hidden=16,
                                           layers=2, device="cpu", amp="bf16"), data=d)
    assert tr.step == 3 and np.isfinite(tr.stats["loss"])
    assert all(p.dtype == torch.float32 for p in tr.net.parameters())  # autocast, not a half-precision model


def test_perception_trains_under_bf16_autocast_with_the_same_batches(cache, tmp_path):
    from mm2latent.train.perception import PerceptionTrainOptions, train_perception

    def run(name, amp):
        return train_perception(PerceptionTrainOptions(
            task="mask_ae", data=str(cache), out=str(tmp_path / name), steps=2, batch=4, warmup=1,
            model={"base": 4, "max_width": 16, "latent_dim": 32, "bottom": 4}, device="cpu", amp=amp), quiet=True)

    full, bf16 = run("f", "none"), run("b", "bf16")
    assert bf16.step == 2 and np.isfinite(bf16.loss_ema)
    assert bf16.sampler.cursor == full.sampler.cursor  # data order and augmentation do not depend on it
    assert abs(bf16.loss_ema - full.loss_ema) < 0.2 * abs(full.loss_ema)


def test_clip_and_inverter_train_under_bf16_autocast(cache, tmp_path):
    from mm2latent.models.inversion import ImageEncoder, ImageEncoderConfig
    from mm2latent.models.stylegan2 import Generator, StyleGAN2Config
    from mm2latent.train.clip import CLIPTrainOptions, train_clip
    from mm2latent.train.inverter import InverterOptions, train_inverter

    from mm2latent.world.cache import build_cache

    captioned = build_cache(tmp_path / "cap", "val", num=12, size=SIZE, workers=1)
    cfg = tiny_clip().config.to_dict()
    cfg["image_resolution"] = SIZE
    tr = train_clip(CLIPTrainOptions(data=str(captioned), out=str(tmp_path / "c"), steps=2, batch=8, warmup=1,
                                     ckpt_every=10, config=cfg, device="cpu", amp="bf16"))
    assert tr.step == 2
    torch.manual_seed(0)
    G = Generator(StyleGAN2Config(resolution=SIZE, z_dim=16, w_dim=16, mapping_layers=2,
                                  channels={4: 16, 8: 16, 16: 8, 32: 8, 64: 8})).eval()
    E = ImageEncoder(ImageEncoderConfig(size=SIZE, z_dim=16, widths=[8, 8, 16, 16]))
    inv = train_inverter(InverterOptions(out=str(tmp_path / "i"), data=str(cache), batch=2, sample_batch=2, steps=2,
                                         sample_every=0, progressive_steps=1, parser="", analyzer="",
                                         device="cpu", amp="bf16"), generator=G, image_encoder=E)
    assert inv.step == 2
    assert TINY  # the tiny model shapes the other tests share
