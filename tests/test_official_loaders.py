"""Official StyleGAN2 checkpoint loaders (rosinality .pt, NVlabs .pkl).

Real files cannot be downloaded here, so each test writes a small random
generator in the exact on-disk layout of the two projects (key names,
shapes, pickle structure incl. the ``torch_utils.persistence`` hook) and
checks that our converted Generator reproduces a reference forward pass
written directly from the published equations (per-sample modulated
weights, explicit polyphase FIR upsampling), independent of our modules.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mm2latent.common.errors import UserError
from mm2latent.models import official
from mm2latent.models.official import load_official, nvlabs_to_ours, rosinality_to_ours
from mm2latent.models.stylegan2 import Generator, StyleGAN2Config

SQRT2 = math.sqrt(2.0)
FIR = torch.tensor([1.0, 3.0, 3.0, 1.0])



# --------------------------------------------------------------------------- neutral parameters


def make_params(resolution=16, channels=None, z_dim=16, w_dim=16, n_map=3, lr_mul=0.01, device="cpu", seed=0):
    """Random generator parameters in a layout-neutral structure."""
    channels = channels or {4: 16, 8: 12, 16: 8, 32: 8}
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        if device == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=g) * scale

    res_list = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
    P = {"lr_mul": lr_mul, "z_dim": z_dim, "w_dim": w_dim, "res": res_list, "channels": channels}
    dims = [z_dim] + [w_dim] * n_map
    P["mapping"] = [(rnd(dims[i + 1], dims[i], scale=1 / lr_mul), rnd(dims[i + 1], scale=10.0)) for i in range(n_map)]
    P["w_avg"] = rnd(w_dim, scale=0.3)
    P["const"] = rnd(channels[4], 4, 4)
    layers, torgbs = [], []

    def layer(cin, cout, res, up):
        return {"res": res, "up": up, "weight": rnd(cout, cin, 3, 3), "bias": rnd(cout, scale=0.2),
                "affine_w": rnd(cin, w_dim), "affine_b": 1.0 + rnd(cin, scale=0.1),
                "noise_strength": rnd((), scale=0.3), "noise_const": rnd(res, res)}

    for res in res_list:
        c = channels[res]
        if res == 4:
            layers.append(layer(c, c, 4, False))
        else:
            layers.append(layer(channels[res // 2], c, res, True))
            layers.append(layer(c, c, res, False))
        torgbs.append({"weight": rnd(3, c, 1, 1), "bias": rnd(3, scale=0.1), "affine_w": rnd(c, w_dim),
                       "affine_b": 1.0 + rnd(c, scale=0.1)})
    P["layers"], P["torgb"] = layers, torgbs
    return P


def params_from_ours(G: Generator) -> dict:
    """Read our Generator into the neutral structure (for round trips)."""
    sd = {k: v.detach().clone() for k, v in G.state_dict().items()}
    cfg = G.cfg
    P = {"lr_mul": cfg.lr_mlp, "z_dim": cfg.z_dim, "w_dim": cfg.w_dim, "res": cfg.resolutions,
         "channels": {r: cfg.g_width(r) for r in cfg.resolutions}}
    P["mapping"] = [(sd[f"mapping.fcs.{i}.weight"], sd[f"mapping.fcs.{i}.bias"]) for i in range(cfg.mapping_layers)]
    P["w_avg"] = sd["mapping.w_avg"]
    P["const"] = sd["synthesis.blocks.0.const"]
    P["layers"], P["torgb"] = [], []
    for k, res in enumerate(cfg.resolutions):
        for name in (["conv1"] if k == 0 else ["conv0", "conv1"]):
            p = f"synthesis.blocks.{k}.{name}."
            P["layers"].append({"res": res, "up": name == "conv0", "weight": sd[p + "weight"], "bias": sd[p + "bias"],
                                "affine_w": sd[p + "affine.weight"], "affine_b": sd[p + "affine.bias"],
                                "noise_strength": sd[p + "noise_strength"], "noise_const": sd[p + "noise_const"]})
        p = f"synthesis.blocks.{k}.torgb."
        P["torgb"].append({"weight": sd[p + "weight"], "bias": sd[p + "bias"], "affine_w": sd[p + "affine.weight"],
                           "affine_b": sd[p + "affine.bias"]})
    return P


# --------------------------------------------------------------------------- reference forward


def _fir_1d(x, dim, taps, pad0, pad1):
    """Correlate along ``dim`` with 1-D taps after zero padding (symmetric filter)."""
    x = x.movedim(dim, -1)
    x = F.pad(x, [pad0, pad1])
    n = x.shape[-1] - len(taps) + 1
    out = sum(t * x[..., i:i + n] for i, t in enumerate(taps))
    return out.movedim(-1, dim)


def _upsample_polyphase(x):
    """2x upsampling with [1,3,3,1]: out[2i] = (x[i-1]+3x[i])/4, out[2i+1] = (3x[i]+x[i+1])/4."""
    for dim in (2, 3):
        xm = x.movedim(dim, -1)
        prev = F.pad(xm, [1, 0])[..., :-1]
        nxt = F.pad(xm, [0, 1])[..., 1:]
        even, odd = (prev + 3 * xm) / 4, (3 * xm + nxt) / 4
        x = torch.stack([even, odd], dim=-1).flatten(-2).movedim(-1, dim)
    return x


def reference_synthesis(P, ws, noise=True):
    """StyleGAN2 synthesis from the paper's equations, one sample at a time."""
    w_dim = P["w_dim"]
    imgs = []
    taps = (FIR / FIR.sum() * 2).tolist()  # per-dimension gain 2 -> total gain 4
    for b in range(ws.shape[0]):
        wi = iter(range(ws.shape[1]))
        x = P["const"][None]
        img = None
        li = 0
        for ri, res in enumerate(P["res"]):
            n_conv = 1 if res == 4 else 2
            w_ids = [next(wi) for _ in range(n_conv)]
            for j in range(n_conv):
                L = P["layers"][li]
                li += 1
                w = ws[b, w_ids[j]]
                s = L["affine_w"] @ w / math.sqrt(w_dim) + L["affine_b"]          # style per input channel
                wt = L["weight"] * s[None, :, None, None]                            # modulate
                wt = wt / torch.sqrt(wt.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)  # demodulate
                if L["up"]:
                    h = x.shape[-1]
                    z = torch.zeros(1, x.shape[1], 2 * h - 1, 2 * h - 1)
                    z[:, :, ::2, ::2] = x
                    x = F.conv2d(F.pad(z, [2, 2, 2, 2]), wt.flip([2, 3]))           # = stride-2 transposed conv
                    x = _fir_1d(_fir_1d(x, 2, taps, 1, 1), 3, taps, 1, 1)
                else:
                    x = F.conv2d(x, wt, padding=1)
                if noise:
                    x = x + L["noise_strength"] * L["noise_const"]
                x = F.leaky_relu(x + L["bias"][None, :, None, None], 0.2) * SQRT2
            # toRGB uses the next w (shared with the next block's first conv)
            T = P["torgb"][ri]
            w = ws[b, w_ids[-1] + 1]
            s = (T["affine_w"] @ w / math.sqrt(w_dim) + T["affine_b"]) / math.sqrt(x.shape[1])
            y = F.conv2d(x, T["weight"] * s[None, :, None, None]) + T["bias"][None, :, None, None]
            img = y if img is None else _upsample_polyphase(img) + y
        imgs.append(img)
    return torch.cat(imgs)


def reference_mapping(P, z):
    x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
    lr = P["lr_mul"]
    for W, b in P["mapping"]:
        x = F.leaky_relu(x @ (W * lr / math.sqrt(W.shape[1])).t() + b * lr, 0.2) * SQRT2
    return x


def num_ws(P):
    return 2 * len(P["res"])


# --------------------------------------------------------------------------- rosinality layout


def blur_kernel():
    k = torch.outer(FIR, FIR)
    return k / k.sum() * 4  # rosinality stores make_kernel(k) * factor**2 for up-sampling blurs


def to_rosinality(P) -> OrderedDict:
    """Key names and shapes of rosinality/stylegan2-pytorch ``Generator.state_dict()``."""
    sd = OrderedDict()
    for i, (W, b) in enumerate(P["mapping"]):
        sd[f"style.{i + 1}.weight"] = W
        sd[f"style.{i + 1}.bias"] = b
    sd["input.input"] = P["const"][None]

    def styled(prefix, L):
        if L["up"]:
            sd[f"{prefix}.conv.blur.kernel"] = blur_kernel()
        sd[f"{prefix}.conv.weight"] = L["weight"][None]
        sd[f"{prefix}.conv.modulation.weight"] = L["affine_w"]
        sd[f"{prefix}.conv.modulation.bias"] = L["affine_b"]
        sd[f"{prefix}.noise.weight"] = L["noise_strength"].reshape(1)
        sd[f"{prefix}.activate.bias"] = L["bias"]

    def torgb(prefix, T, up):
        if up:
            sd[f"{prefix}.upsample.kernel"] = blur_kernel()
        sd[f"{prefix}.bias"] = T["bias"].reshape(1, 3, 1, 1)
        sd[f"{prefix}.conv.weight"] = T["weight"][None]
        sd[f"{prefix}.conv.modulation.weight"] = T["affine_w"]
        sd[f"{prefix}.conv.modulation.bias"] = T["affine_b"]

    styled("conv1", P["layers"][0])
    torgb("to_rgb1", P["torgb"][0], False)
    for i, L in enumerate(P["layers"][1:]):
        styled(f"convs.{i}", L)
    for i, T in enumerate(P["torgb"][1:]):
        torgb(f"to_rgbs.{i}", T, True)
    for i, L in enumerate(P["layers"]):
        sd[f"noises.noise_{i}"] = L["noise_const"].reshape(1, 1, L["res"], L["res"])
    return sd


# --------------------------------------------------------------------------- NVlabs pickle layout

MODULE_SRC_MARKER = "nvlabs_module_src_was_executed"


class FakePersistent:
    """Pickles exactly like an NVlabs persistent module: _reconstruct_persistent_obj(meta)."""

    def __init__(self, class_name, params=(), buffers=(), modules=(), **attrs):
        self.class_name = class_name
        self.state = {
            "training": False,
            "_parameters": OrderedDict((k, torch.nn.Parameter(v, requires_grad=False)) for k, v in params),
            "_buffers": OrderedDict(buffers),
            "_non_persistent_buffers_set": set(),
            "_backward_hooks": OrderedDict(),
            "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(),
            "_state_dict_hooks": OrderedDict(),
            "_load_state_dict_pre_hooks": OrderedDict(),
            "_modules": OrderedDict(modules),
            "_init_args": (),
            "_init_kwargs": FakeEasyDict(),
            **attrs,
        }

    def __reduce__(self):
        meta = dict(type="class", version=4, module_src=self.module_src, class_name=self.class_name, state=self.state)
        return (_fake_reconstruct, (meta,))


def _fake_reconstruct(meta):  # pragma: no cover - only referenced by name in the pickle
    raise AssertionError("never called")


class FakeEasyDict(dict):
    pass


@pytest.fixture
def nvlabs_modules(tmp_path):
    """Register stand-ins for torch_utils.persistence / dnnlib.util while pickling."""
    persistence = types.ModuleType("torch_utils.persistence")
    tu = types.ModuleType("torch_utils")
    dn = types.ModuleType("dnnlib")
    dnu = types.ModuleType("dnnlib.util")
    _fake_reconstruct.__module__ = "torch_utils.persistence"
    _fake_reconstruct.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _fake_reconstruct
    FakeEasyDict.__module__ = "dnnlib.util"
    FakeEasyDict.__qualname__ = "EasyDict"
    dnu.EasyDict = FakeEasyDict
    marker = tmp_path / "src_ran"
    # module source that would leave a file behind if anyone executed it
    FakePersistent.module_src = f"open({str(marker)!r}, 'w').write('ran')  # {MODULE_SRC_MARKER}\n"
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")}
    sys.modules.update({"torch_utils": tu, "torch_utils.persistence": persistence, "dnnlib": dn, "dnnlib.util": dnu})
    try:
        yield marker
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def to_nvlabs(P, conv_clamp=None) -> FakePersistent:
    """A G_ema module tree with stylegan2-ada-pytorch's names, buffers and attributes."""
    f1 = FIR / FIR.sum()
    lr = P["lr_mul"]

    def fc(W, b, lr_mul=1.0, act="linear"):
        return FakePersistent("FullyConnectedLayer", params=[("weight", W), ("bias", b)], activation=act,
                              weight_gain=np.float64(lr_mul / np.sqrt(W.shape[1])), bias_gain=lr_mul)

    maps = [(f"fc{i}", fc(W, b, lr, "lrelu")) for i, (W, b) in enumerate(P["mapping"])]
    mapping = FakePersistent("MappingNetwork", buffers=[("w_avg", P["w_avg"])], modules=maps, z_dim=P["z_dim"],
                             c_dim=0, w_dim=P["w_dim"], num_ws=num_ws(P), num_layers=len(maps), w_avg_beta=0.995)

    def layer(L):
        return FakePersistent(
            "SynthesisLayer", params=[("weight", L["weight"]), ("noise_strength", L["noise_strength"]),
                                      ("bias", L["bias"])],
            buffers=[("resample_filter", f1.clone()), ("noise_const", L["noise_const"])],
            modules=[("affine", fc(L["affine_w"], L["affine_b"]))], resolution=L["res"], up=2 if L["up"] else 1,
            use_noise=True, activation="lrelu", conv_clamp=conv_clamp, padding=1, act_gain=float(SQRT2))

    blocks = []
    li = 0
    for ri, res in enumerate(P["res"]):
        mods, params = [], []
        if res == 4:
            params.append(("const", P["const"]))
            mods.append(("conv1", layer(P["layers"][li])))
            li += 1
        else:
            mods.append(("conv0", layer(P["layers"][li])))
            mods.append(("conv1", layer(P["layers"][li + 1])))
            li += 2
        T = P["torgb"][ri]
        mods.append(("torgb", FakePersistent("ToRGBLayer", params=[("weight", T["weight"]), ("bias", T["bias"])],
                                             modules=[("affine", fc(T["affine_w"], T["affine_b"]))],
                                             conv_clamp=conv_clamp,
                                             weight_gain=np.float64(1 / np.sqrt(T["weight"].shape[1])))))
        blocks.append((f"b{res}", FakePersistent(
            "SynthesisBlock", params=params, buffers=[("resample_filter", f1.clone())], modules=mods,
            in_channels=0 if res == 4 else P["channels"][res // 2], w_dim=P["w_dim"], resolution=res, img_channels=3,
            is_last=res == P["res"][-1], architecture="skip", use_fp16=False, channels_last=False,
            num_conv=1 if res == 4 else 2, num_torgb=1)))
    synthesis = FakePersistent("SynthesisNetwork", modules=blocks, w_dim=P["w_dim"], img_resolution=P["res"][-1],
                               img_channels=3, num_ws=num_ws(P))
    return FakePersistent("Generator", modules=[("synthesis", synthesis), ("mapping", mapping)], z_dim=P["z_dim"],
                          c_dim=0, w_dim=P["w_dim"], img_resolution=P["res"][-1], img_channels=3, num_ws=num_ws(P))


def write_nvlabs_pkl(path, P, **kw):
    G = to_nvlabs(P, **kw)
    D = FakePersistent("Discriminator", params=[("weight", torch.randn(4, 3, 1, 1))])
    snapshot = {"G": G, "D": D, "G_ema": G, "augment_pipe": None,
                "training_set_kwargs": FakeEasyDict(path="ffhq.zip", resolution=P["res"][-1])}
    with open(path, "wb") as f:
        pickle.dump(snapshot, f)


# --------------------------------------------------------------------------- tests


def _compare_to_reference(G, P, atol=2e-4):
    z = torch.randn(3, P["z_dim"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        w_ref = reference_mapping(P, z)
        torch.testing.assert_close(G.mapping(z), w_ref, atol=1e-4, rtol=1e-4)
        ws = w_ref[:, None].repeat(1, G.num_ws, 1) + 0.1 * torch.randn(3, G.num_ws, P["w_dim"])  # real w+
        ref = reference_synthesis(P, ws)
        ours = G.synthesis(ws, noise_mode="const")
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=atol, rtol=1e-4)


def test_rosinality_pt_matches_reference(tmp_path):
    P = make_params()
    path = tmp_path / "550000.pt"
    torch.save({"g_ema": to_rosinality(P), "latent_avg": P["w_avg"],
                "args": argparse.Namespace(size=16, n_mlp=3, latent=16)}, path)
    G = load_official(path)
    assert G.cfg.resolution == 16 and G.cfg.mapping_layers == 3 and G.cfg.channels == {4: 16, 8: 12, 16: 8}
    torch.testing.assert_close(G.w_avg, P["w_avg"])
    _compare_to_reference(G, P)


def test_rosinality_without_latent_avg_estimates_it(tmp_path):
    P = make_params()
    path = tmp_path / "g.pt"
    torch.save({"g_ema": to_rosinality(P)}, path)
    G = load_official(path)
    z = torch.randn(4000, P["z_dim"], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        mean = reference_mapping(P, z).mean(0)
    assert (G.w_avg - mean).abs().max() < 0.15 * mean.abs().max() + 0.05


def test_rosinality_without_noise_maps_still_loads(tmp_path, capsys):
    P = make_params()
    sd = {k: v for k, v in to_rosinality(P).items() if not k.startswith("noises.")}
    path = tmp_path / "old.pt"
    torch.save({"g_ema": sd, "latent_avg": P["w_avg"]}, path)
    G = load_official(path)
    assert "no fixed noise maps" in capsys.readouterr().err
    ws = torch.randn(2, G.num_ws, P["w_dim"], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(G.synthesis(ws, noise_mode="none"), reference_synthesis(P, ws, noise=False),
                                   atol=2e-4, rtol=1e-4)


def test_nvlabs_pkl_matches_reference_and_never_runs_module_source(tmp_path, nvlabs_modules):
    P = make_params(resolution=32)
    path = tmp_path / "network-snapshot-000100.pkl"
    write_nvlabs_pkl(path, P)
    raw = path.read_bytes()
    assert b"torch_utils.persistence" in raw and b"_reconstruct_persistent_obj" in raw
    assert MODULE_SRC_MARKER.encode() in raw
    G = load_official(path)
    assert not nvlabs_modules.exists(), "module source embedded in the pickle was executed"
    assert G.cfg.resolution == 32 and G.cfg.lr_mlp == pytest.approx(0.01)
    torch.testing.assert_close(G.w_avg, P["w_avg"])
    _compare_to_reference(G, P)


def test_nvlabs_conv_clamp_is_carried(tmp_path, nvlabs_modules):
    P = make_params()
    path = tmp_path / "clamped.pkl"
    write_nvlabs_pkl(path, P, conv_clamp=256)
    G = load_official(path)
    assert G.cfg.conv_clamp == 256.0


@pytest.mark.parametrize("fmt", ["rosinality", "nvlabs"])
def test_round_trip_identical_images(tmp_path, fmt, nvlabs_modules):
    cfg = StyleGAN2Config(resolution=16, z_dim=12, w_dim=12, mapping_layers=2, channels={4: 8, 8: 8, 16: 6})
    torch.manual_seed(3)
    G = Generator(cfg).eval()
    with torch.no_grad():  # make every parameter matter
        for n, p in G.named_parameters():
            if "noise_strength" in n or n.endswith("bias"):
                p.normal_(0, 0.2)
        G.mapping.w_avg.normal_()
    P = params_from_ours(G)
    if fmt == "rosinality":
        path = tmp_path / "rt.pt"
        torch.save({"g_ema": to_rosinality(P), "latent_avg": P["w_avg"]}, path)
    else:
        path = tmp_path / "rt.pkl"
        write_nvlabs_pkl(path, P)
    G2 = load_official(path)
    z = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = G(z, truncation_psi=0.7, noise_mode="const")
        b = G2(z, truncation_psi=0.7, noise_mode="const")
    assert torch.equal(a, b)


def test_convert_cli_writes_our_format(tmp_path):
    from mm2latent.cli.main import main
    from mm2latent.models.stylegan2 import load_generator

    P = make_params()
    src = tmp_path / "in.pt"
    torch.save({"g_ema": to_rosinality(P), "latent_avg": P["w_avg"]}, src)
    out = tmp_path / "out" / "ffhq"
    assert main(["convert", str(src), "--out", str(out)]) == 0
    G = load_generator(out)
    _compare_to_reference(G, P)
    assert main(["convert", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2


# --- full-size name maps (meta tensors, nothing allocated)

FFHQ_CONFIGS = {
    # rosinality channel_multiplier=2 / NVlabs config F (cbase 32768): 1024px and 256px
    "1024-f": (1024, {r: min(32768 // r, 512) for r in [2**i for i in range(2, 11)]}),
    "256-f": (256, {r: min(32768 // r, 512) for r in [2**i for i in range(2, 9)]}),
    # NVlabs paper256 / rosinality channel_multiplier=1 (cbase 16384)
    "256-paper": (256, {r: min(16384 // r, 512) for r in [2**i for i in range(2, 9)]}),
}


@pytest.mark.parametrize("name", list(FFHQ_CONFIGS))
@pytest.mark.parametrize("fmt", ["rosinality", "nvlabs"])
def test_full_size_name_maps(name, fmt):
    res, ch = FFHQ_CONFIGS[name]
    P = make_params(resolution=res, channels=ch, z_dim=512, w_dim=512, n_map=8, device="meta")
    if fmt == "rosinality":
        cfg, ours = rosinality_to_ours(to_rosinality(P))
    else:
        sd = {"mapping.w_avg": P["w_avg"]}
        tensors, _ = official.flatten_persistent(_as_stub(to_nvlabs(P)))
        sd.update({k: v for k, v in tensors.items() if not k.endswith("resample_filter")})
        cfg, ours = nvlabs_to_ours(sd)
        ours.pop("mapping.w_avg")
    assert cfg.resolution == res and cfg.num_ws == 2 * int(math.log2(res)) - 2
    with torch.device("meta"):
        G = Generator(cfg)
    want = {k: tuple(v.shape) for k, v in G.state_dict().items() if k != "mapping.w_avg"}
    got = {k: tuple(v.shape) for k, v in ours.items()}
    assert got == want
    if name == "1024-f":
        assert cfg.num_ws == 18 and sum(math.prod(s) for s in want.values()) > 28_000_000


def _as_stub(fp: FakePersistent) -> official.PersistentObject:
    """Convert the test-side tree into the loader's stub objects without pickling (meta tensors)."""
    st = dict(fp.state)
    st["_modules"] = OrderedDict((k, _as_stub(v)) for k, v in st["_modules"].items())
    return official.PersistentObject(fp.class_name, st)


# --- refusals


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _EvalEvil(_Evil):
    def __reduce__(self):
        return (eval, (f"open({str(self.path)!r}, 'w')",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Evil(marker)}))
    with pytest.raises(UserError, match="refus"):
        load_official(path)
    assert not marker.exists()
    # also hidden inside an otherwise valid NVlabs-looking structure, and via builtins.eval
    path.write_bytes(pickle.dumps({"x": [OrderedDict(a=_Evil(marker))]}))
    with pytest.raises(UserError, match="refus"):
        load_official(path)
    path.write_bytes(pickle.dumps(_EvalEvil(marker)))
    with pytest.raises(UserError, match="refus"):
        load_official(path)
    assert not marker.exists()


def test_malicious_pt_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {"style.1.weight": torch.zeros(2, 2)}, "x": _Evil(marker)}, path)
    with pytest.raises(UserError, match="refusing"):
        load_official(path)
    assert not marker.exists()


def test_bad_checkpoints_give_clear_errors(tmp_path, nvlabs_modules):
    P = make_params()
    sd = to_rosinality(P)
    del sd["convs.1.conv.weight"]
    p = tmp_path / "missing.pt"
    torch.save({"g_ema": sd}, p)
    with pytest.raises(UserError, match="convs.1.conv.weight"):
        load_official(p)
    # truncated files
    good = tmp_path / "good.pt"
    torch.save({"g_ema": to_rosinality(P)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(UserError):
        load_official(cut)
    pkl = tmp_path / "good.pkl"
    write_nvlabs_pkl(pkl, P)
    cutp = tmp_path / "cut.pkl"
    cutp.write_bytes(pkl.read_bytes()[: pkl.stat().st_size // 2])
    with pytest.raises(UserError):
        load_official(cutp)
    # another architecture's keys
    sd = to_rosinality(P)
    sd["dwt.ll"] = torch.zeros(1)
    torch.save({"g_ema": sd}, p)
    with pytest.raises(UserError, match="dwt.ll"):
        load_official(p)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(UserError):
        load_official(junk)
    with pytest.raises(UserError, match="not found"):
        load_official(tmp_path / "nope.pkl")
