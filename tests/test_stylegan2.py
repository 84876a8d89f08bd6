"""StyleGAN2 architecture: shapes, truncation, w/w+, demodulation, FIR, D, I/O."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mm2latent.common.errors import UserError
from mm2latent.models.stylegan2 import (
    Discriminator,
    Generator,
    MinibatchStd,
    StyleGAN2Config,
    downsample2d,
    fir_kernel,
    load_generator,
    modulated_conv2d,
    save_generator,
    upfirdn2d,
    upsample2d,
)


CFG = StyleGAN2Config(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8, 32: 8})


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    g = Generator(CFG).eval()
    with torch.no_grad():
        for n, p in g.named_parameters():
            if "noise_strength" in n:
                p.fill_(0.5)
        g.mapping.w_avg.normal_()
    return g


def z(n=4, seed=0):
    return torch.randn(n, CFG.z_dim, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_range_of_outputs(G):
    with torch.no_grad():
        img = G(z())
        w = G.mapping(z())
    assert img.shape == (4, 3, 32, 32) and img.dtype == torch.float32
    assert w.shape == (4, CFG.w_dim)
    assert G.num_ws == CFG.num_ws == 8
    assert torch.isfinite(img).all()
    assert Generator(StyleGAN2Config(resolution=1024, z_dim=4, w_dim=4, channel_base=4096, channel_max=4,
                                     mapping_layers=1)).num_ws == 18


def test_truncation_psi_zero_gives_w_avg_image(G):
    with torch.no_grad():
        img = G(z(3), truncation_psi=0.0, noise_mode="const")
        ref = G.synthesis(G.w_avg[None].expand(1, -1), noise_mode="const")
    for i in range(3):
        torch.testing.assert_close(img[i], ref[0])
    with torch.no_grad():  # psi=0.5 is halfway in w space
        w = G.mapping(z(2))
        torch.testing.assert_close(G.mapping(z(2), truncation_psi=0.5), G.w_avg + 0.5 * (w - G.w_avg))


def test_truncation_cutoff_only_touches_first_layers(G):
    with torch.no_grad():
        _, ws = G(z(2), truncation_psi=0.5, truncation_cutoff=3, return_ws=True)
        w = G.mapping(z(2))
    torch.testing.assert_close(ws[:, 3:], w[:, None].expand(-1, G.num_ws - 3, -1))
    torch.testing.assert_close(ws[:, :3], (G.w_avg + 0.5 * (w - G.w_avg))[:, None].expand(-1, 3, -1))


def test_w_and_w_plus_are_equivalent(G):
    with torch.no_grad():
        w = G.mapping(z())
        a = G.synthesis(w, noise_mode="const")
        b = G.synthesis(w[:, None].repeat(1, G.num_ws, 1), noise_mode="const")
        c = G(z(), noise_mode="const")
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    with pytest.raises(ValueError):
        G.synthesis(torch.zeros(2, G.num_ws + 1, CFG.w_dim))


def test_style_mixing(G):
    with torch.no_grad():
        wa = G.broadcast(G.mapping(z(2, 1)))
        wb = G.broadcast(G.mapping(z(2, 2)))
        mixed = G(z(2, 1), mix_z=z(2, 2), mix_cutoff=4, noise_mode="const")
        ref = G.synthesis(torch.cat([wa[:, :4], wb[:, 4:]], 1), noise_mode="const")
        pure = G.synthesis(wa, noise_mode="const")
    torch.testing.assert_close(mixed, ref)
    assert not torch.allclose(mixed, pure)


def test_demodulation_normalises_weights():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 9, 9)
    w = torch.randn(7, 5, 3, 3)
    s = torch.rand(2, 5) + 0.5
    out = modulated_conv2d(x, w, s, demodulate=True)
    # explicit per-sample weights, normalised to unit L2 norm per output channel
    ref = []
    for b in range(2):
        wb = w * s[b][None, :, None, None]
        wb = wb / (wb.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        assert torch.allclose(wb.square().sum(dim=(1, 2, 3)), torch.ones(7))
        ref.append(F.conv2d(x[b:b + 1], wb, padding=1))
    torch.testing.assert_close(out, torch.cat(ref), atol=1e-5, rtol=1e-5)
    # invariant to a global rescaling of the styles
    torch.testing.assert_close(modulated_conv2d(x, w, s * 7.0, demodulate=True), out, atol=1e-5, rtol=1e-5)
    # unit-variance iid input -> roughly unit-variance output
    big = modulated_conv2d(torch.randn(8, 5, 64, 64), w, s.repeat(4, 1), demodulate=True)
    assert 0.8 < big.std().item() < 1.2


def test_fir_upsample_preserves_constant_and_matches_polyphase():
    f = fir_kernel()
    c = torch.full((1, 3, 8, 8), 0.37)
    up = upsample2d(c, f)
    assert up.shape == (1, 3, 16, 16)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 0.37))
    down = downsample2d(c, f)
    assert down.shape == (1, 3, 4, 4)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 0.37))
    # 1-D polyphase form of [1,3,3,1] upsampling: out[2i] = (x[i-1] + 3 x[i]) / 4, out[2i+1] = (3 x[i] + x[i+1]) / 4
    x = torch.randn(1, 1, 1, 6)
    u = upfirdn2d(x.expand(1, 1, 6, 6).contiguous(), f, up=2, pad=(2, 1, 2, 1), gain=4.0)[0, 0, 6]
    xp = F.pad(x[0, 0, 0], [1, 1])
    even = (xp[:-2] + 3 * xp[1:-1]) / 4
    odd = (3 * xp[1:-1] + xp[2:]) / 4
    torch.testing.assert_close(u, torch.stack([even, odd], 1).flatten())


def test_discriminator_shape_and_minibatch_std():
    torch.manual_seed(0)
    D = Discriminator(CFG)
    for n in (1, 3, 4, 6, 8):
        assert D(torch.randn(n, 3, 32, 32)).shape == (n, 1)
    m = MinibatchStd(4)
    x = torch.randn(8, 2, 3, 3)
    y = m(x)
    assert y.shape == (8, 3, 3, 3)
    # group g = {i, i+2, i+4, i+6}: the std feature of sample 0 uses samples 0, 2, 4, 6
    grp = x[[0, 2, 4, 6]]
    ref = (grp.var(0, unbiased=False) + 1e-8).sqrt().mean()
    torch.testing.assert_close(y[0, 2, 0, 0], ref)
    with pytest.raises(ValueError):
        D(torch.randn(2, 3, 16, 16))


def test_determinism_and_noise_modes():
    torch.manual_seed(123)
    g1 = Generator(CFG)
    torch.manual_seed(123)
    g2 = Generator(CFG)
    for a, b in zip(g1.state_dict().values(), g2.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        for p in (g1, g2):
            for n, q in p.named_parameters():
                if "noise_strength" in n:
                    q.fill_(1.0)
        torch.manual_seed(5)
        r1 = g1(z())
        torch.manual_seed(5)
        r2 = g2(z())
        assert torch.equal(r1, r2)
        assert not torch.equal(g1(z()), g1(z()))  # fresh noise each call
        assert torch.equal(g1(z(), noise_mode="const"), g1(z(), noise_mode="const"))
        assert not torch.equal(g1(z(), noise_mode="const"), g1(z(), noise_mode="none"))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    g, d = Generator(CFG), Discriminator(CFG)
    d(g(z())).sum().backward()
    for module in (g, d):
        missing = [n for n, p in module.named_parameters() if p.grad is None]
        assert not missing, missing


def test_config_validation():
    with pytest.raises(UserError, match="power of two"):
        StyleGAN2Config(resolution=96)
    with pytest.raises(UserError, match="lacks widths"):
        StyleGAN2Config(resolution=16, channels={4: 8, 8: 8})
    cfg = StyleGAN2Config(resolution=16, channel_base=256, channel_max=32)
    assert [cfg.g_width(r) for r in cfg.resolutions] == [32, 32, 16]
    assert StyleGAN2Config.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(UserError, match="unknown fields"):
        StyleGAN2Config.from_dict({**CFG.to_dict(), "bogus": 1})


def test_save_load_generator(tmp_path, G):
    path = save_generator(tmp_path / "g", G)
    assert path.suffix == ".safetensors" and (tmp_path / "g.json").exists()
    G2 = load_generator(tmp_path / "g")
    with torch.no_grad():
        assert torch.equal(G(z(), noise_mode="const"), G2(z(), noise_mode="const"))
    save_generator(tmp_path / "h", G, dtype=torch.float16)
    assert (tmp_path / "h.safetensors").stat().st_size < 0.6 * path.stat().st_size
    G3 = load_generator(tmp_path / "h")
    with torch.no_grad():
        assert (G(z(), noise_mode="const") - G3(z(), noise_mode="const")).abs().max() < 0.05
    # truncated file, wrong kind, wrong shapes -> one clear UserError
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    (tmp_path / "bad.json").write_text((tmp_path / "g.json").read_text())
    with pytest.raises(UserError):
        load_generator(tmp_path / "bad")
    from mm2latent.common.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "other", {"x": torch.zeros(1)}, {"kind": "parser"})
    with pytest.raises(UserError, match="expected 'stylegan2-generator'"):
        load_generator(tmp_path / "other")
    small = Generator(StyleGAN2Config(resolution=16, z_dim=16, w_dim=16, mapping_layers=2,
                                      channels={4: 16, 8: 16, 16: 8}))
    save_checkpoint(tmp_path / "mism", small.state_dict(), {"kind": "stylegan2-generator", "config": CFG.to_dict()})
    with pytest.raises(UserError, match="missing"):
        load_generator(tmp_path / "mism")


def test_cpu_speed_reasonable():
    """A 128px generator with small widths renders a batch quickly on CPU."""
    cfg = StyleGAN2Config(resolution=128, z_dim=64, w_dim=64, mapping_layers=2,
                          channels={4: 64, 8: 64, 16: 64, 32: 32, 64: 32, 128: 16})
    g = Generator(cfg).eval()
    import time

    with torch.no_grad():
        g(torch.randn(2, 64))
        t = time.perf_counter()
        out = g(torch.randn(8, 64))
        dt = time.perf_counter() - t
    assert out.shape == (8, 3, 128, 128)
    assert dt < 5.0 and math.isfinite(dt)


def test_widened_generator_draws_the_same_images_and_can_use_its_new_channels():
    """widen_generator adds channels to chosen synthesis blocks without changing a single image
    (added channels feed existing ones through zero weights; toRGB's gain is compensated), keeps
    every other tensor, and the added channels do receive gradient once trained; narrowing or an
    unknown resolution is refused."""
    from mm2latent.models.stylegan2 import widen_generator

    torch.manual_seed(0)
    G = Generator(StyleGAN2Config(resolution=32, z_dim=16, w_dim=16, mapping_layers=2,
                                  channels={4: 32, 8: 32, 16: 16, 32: 8}))
    with torch.no_grad():
        for p in G.parameters():  # move off the init (zero noise strengths, unit biases) so that all paths count
            p.add_(0.1 * torch.randn_like(p))
    W = widen_generator(G, {32: 16, 16: 24})
    assert [W.cfg.g_width(r) for r in W.cfg.resolutions] == [32, 32, 24, 16]
    assert W.cfg.d_width(32) == G.cfg.d_width(32)  # the discriminator's widths are not touched
    ws = torch.randn(6, G.num_ws, 16)
    for mode in ("const", "none"):
        assert torch.allclose(W.synthesis(ws, noise_mode=mode), G.synthesis(ws, noise_mode=mode), atol=1e-5)
    z = torch.randn(3, 16)
    assert torch.allclose(W(z, noise_mode="const"), G(z, noise_mode="const"), atol=1e-5)
    old = G.state_dict()
    for name, t in W.state_dict().items():
        if t.shape == old[name].shape and "torgb.weight" not in name:
            assert torch.equal(t, old[name]), name
    conv1 = W.synthesis.blocks[-1].conv1
    assert conv1.weight.shape == (16, 16, 3, 3) and torch.all(conv1.weight[:8, 8:] == 0)
    W.synthesis(ws, noise_mode="const").square().mean().backward()
    assert conv1.weight.grad[:8, 8:].abs().sum() > 0  # the silent channels still learn
    with pytest.raises(UserError, match="cannot remove"):
        widen_generator(G, {32: 4})
    with pytest.raises(UserError, match="no synthesis block at \\[64\\]"):
        widen_generator(G, {64: 8})
