"""Loaders for the published e4e / pSp encoders and the face-parsing.PyTorch BiSeNet.

Real files cannot be downloaded here, so each test writes a random checkpoint
in the published on-disk layout: the state-dict key/shape tables below are
written from the original projects' module definitions (encoder4editing
``models/encoders/{helpers,psp_encoders}.py`` + ``models/psp.py`` +
``training/coach.py``; face-parsing.PyTorch ``model.py`` + ``resnet.py`` +
``train.py``), not from our modules, and the outputs of our models are
compared with functional forwards written here directly on those state
dicts. The e4e numerics run at reduced widths (the loader infers every size
from the shapes); the full-size table is checked on the meta device. BiSeNet
runs at its true size on small images.
"""

from __future__ import annotations

import math
import os
import pickle
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from mm2latent.common.errors import UserError
from mm2latent.common.palette import CLASS_INDEX, CLASS_NAMES
from mm2latent.models import bisenet as bisenet_mod
from mm2latent.models.bisenet import BISENET_TO_OURS, load_bisenet
from mm2latent.models.e4e import E4EConfig, E4EEncoder, encoder_config_from_state_dict, load_e4e
from test_official_loaders import make_params, reference_synthesis, to_rosinality

IR50 = (3, 4, 14, 3)


# --------------------------------------------------------------------------- random state from a table


def _bn(t, p, c):
    for name in ("weight", "bias", "running_mean", "running_var"):
        t[f"{p}.{name}"] = (c,)
    t[f"{p}.num_batches_tracked"] = ()


def random_state(table: dict, seed: int = 0) -> OrderedDict:
    """Random tensors for a key -> shape table, scaled so deep nets stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for k, shape in table.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(shape, generator=g)
        elif k.endswith("running_mean"):
            sd[k] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 4:
            sd[k] = torch.randn(shape, generator=g) / math.sqrt(shape[1] * shape[2] * shape[3])
        elif k.endswith(".weight") and len(shape) == 1:  # BN gamma or PReLU slope
            base = 0.25 if "res_layer.2" in k or "input_layer.2" in k else 1.0
            sd[k] = base + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 2:  # EqualLinear: N(0, 1), scaled by 1/sqrt(in) at run time
            sd[k] = torch.randn(shape, generator=g)
        else:
            sd[k] = 0.1 * torch.randn(shape, generator=g)
    return sd


def _one_line_user_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# --------------------------------------------------------------------------- e4e / pSp layout


def e4e_encoder_table(widths=(64, 128, 256, 512), style_dim=512, n_styles=18, in_ch=3, se=True) -> OrderedDict:
    """``Encoder4Editing(50, 'ir_se', opts).state_dict()`` (GradualStyleEncoder has the same) names/shapes."""
    t = OrderedDict()
    t["input_layer.0.weight"] = (widths[0], in_ch, 3, 3)
    _bn(t, "input_layer.1", widths[0])
    t["input_layer.2.weight"] = (widths[0],)
    i, cin = 0, widths[0]
    for width, n in zip(widths, IR50):
        for _ in range(n):
            p = f"body.{i}"
            if cin != width:
                t[f"{p}.shortcut_layer.0.weight"] = (width, cin, 1, 1)
                _bn(t, f"{p}.shortcut_layer.1", width)
            _bn(t, f"{p}.res_layer.0", cin)
            t[f"{p}.res_layer.1.weight"] = (width, cin, 3, 3)
            t[f"{p}.res_layer.2.weight"] = (width,)
            t[f"{p}.res_layer.3.weight"] = (width, width, 3, 3)
            _bn(t, f"{p}.res_layer.4", width)
            if se:
                t[f"{p}.res_layer.5.fc1.weight"] = (width // 16, width, 1, 1)
                t[f"{p}.res_layer.5.fc2.weight"] = (width, width // 16, 1, 1)
            i, cin = i + 1, width
    for s in range(n_styles):
        spatial = 16 if s < 3 else 32 if s < 7 else 64
        for j in range(int(math.log2(spatial))):
            t[f"styles.{s}.convs.{2 * j}.weight"] = (style_dim, widths[3] if j == 0 else style_dim, 3, 3)
            t[f"styles.{s}.convs.{2 * j}.bias"] = (style_dim,)
        t[f"styles.{s}.linear.weight"] = (style_dim, style_dim)
        t[f"styles.{s}.linear.bias"] = (style_dim,)
    t["latlayer1.weight"] = (widths[3], widths[2], 1, 1)
    t["latlayer1.bias"] = (widths[3],)
    t["latlayer2.weight"] = (widths[3], widths[1], 1, 1)
    t["latlayer2.bias"] = (widths[3],)
    return t


def _ref_bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        training=False, eps=1e-5)


def _ref_ir_unit(x, sd, p, stride):
    if p + ".shortcut_layer.0.weight" in sd:
        short = _ref_bn(F.conv2d(x, sd[p + ".shortcut_layer.0.weight"], stride=stride), sd, p + ".shortcut_layer.1")
    else:
        short = x[:, :, ::stride, ::stride]  # MaxPool2d(1, stride)
    r = _ref_bn(x, sd, p + ".res_layer.0")
    r = F.prelu(F.conv2d(r, sd[p + ".res_layer.1.weight"], padding=1), sd[p + ".res_layer.2.weight"])
    r = _ref_bn(F.conv2d(r, sd[p + ".res_layer.3.weight"], stride=stride, padding=1), sd, p + ".res_layer.4")
    if p + ".res_layer.5.fc1.weight" in sd:
        gate = F.relu(F.conv2d(F.adaptive_avg_pool2d(r, 1), sd[p + ".res_layer.5.fc1.weight"]))
        r = r * torch.sigmoid(F.conv2d(gate, sd[p + ".res_layer.5.fc2.weight"]))
    return r + short


def _ref_style(x, sd, p):
    j = 0
    while f"{p}.convs.{2 * j}.weight" in sd:
        x = F.leaky_relu(F.conv2d(x, sd[f"{p}.convs.{2 * j}.weight"], sd[f"{p}.convs.{2 * j}.bias"], stride=2,
                                  padding=1), 0.01)
        j += 1
    W = sd[p + ".linear.weight"]
    x = x.view(-1, W.shape[0])
    return x @ (W / math.sqrt(W.shape[1])).t() + sd[p + ".linear.bias"]


def reference_encoder(sd, x, kind="e4e"):
    """encoder(x) of Encoder4Editing (kind e4e, Inference stage) / GradualStyleEncoder (psp)."""
    x = F.conv2d(x, sd["input_layer.0.weight"], padding=1)
    x = F.prelu(_ref_bn(x, sd, "input_layer.1"), sd["input_layer.2.weight"])
    taps = []
    firsts = {0, 3, 7, 21}
    for i in range(24):
        x = _ref_ir_unit(x, sd, f"body.{i}", 2 if i in firsts else 1)
        if i in (6, 20, 23):
            taps.append(x)
    c1, c2, c3 = taps

    def up_add(a, b):
        return F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=True) + b

    p2 = up_add(c3, F.conv2d(c2, sd["latlayer1.weight"], sd["latlayer1.bias"]))
    p1 = up_add(p2, F.conv2d(c1, sd["latlayer2.weight"], sd["latlayer2.bias"]))
    n = len({k.split(".")[1] for k in sd if k.startswith("styles.")})
    src = [c3 if i < 3 else p2 if i < 7 else p1 for i in range(n)]
    if kind == "psp":
        return torch.stack([_ref_style(src[i], sd, f"styles.{i}") for i in range(n)], dim=1)
    w0 = _ref_style(c3, sd, "styles.0")
    w = w0.repeat(n, 1, 1).permute(1, 0, 2).clone()
    for i in range(1, n):
        w[:, i] += _ref_style(src[i], sd, f"styles.{i}")
    return w


TINY_WIDTHS = (16, 16, 32, 32)
TINY_STYLE = 16  # = the tiny decoder's w_dim
TINY_RES = 32  # decoder size -> 8 style heads: 3 coarse, 4 middle, 1 fine


def make_e4e_checkpoint(path, kind="e4e", latent_avg_shape="full", seed=0, legacy=False, **edit):
    """Write a tiny e4e/pSp checkpoint in the published layout; returns (enc_sd, P, latent_avg)."""
    n = 2 * int(math.log2(TINY_RES)) - 2
    enc = random_state(e4e_encoder_table(TINY_WIDTHS, TINY_STYLE, n), seed)
    P = make_params(resolution=TINY_RES, z_dim=TINY_STYLE, w_dim=TINY_STYLE, n_map=2, seed=seed + 1)
    state = OrderedDict([(f"encoder.{k}", v) for k, v in enc.items()])
    state.update((f"decoder.{k}", v) for k, v in to_rosinality(P).items())
    latent_avg = (P["w_avg"][None].repeat(n, 1) if latent_avg_shape == "full" else P["w_avg"].clone())
    if kind == "e4e":
        opts = {"exp_dir": "experiment", "dataset_type": "ffhq_encode", "encoder_type": "Encoder4Editing",
                "batch_size": 8, "start_from_latent_avg": True, "stylegan_size": TINY_RES, "lpips_type": "alex",
                "progressive_steps": [0, 20000, 22000], "w_discriminator_lambda": 0.1, "device": "cuda:0",
                "stylegan_weights": "pretrained_models/stylegan2-ffhq-config-f.pt", "checkpoint_path": None}
    else:
        opts = {"exp_dir": "experiment", "dataset_type": "ffhq_encode", "encoder_type": "GradualStyleEncoder",
                "input_nc": 3, "label_nc": 0, "output_size": TINY_RES, "start_from_latent_avg": True,
                "learn_in_w": False, "device": "cuda:0", "resize_factors": None}
    ckpt = {"state_dict": state, "opts": opts, "latent_avg": latent_avg}
    for k, v in edit.items():
        if v is None:
            ckpt.pop(k, None)
        else:
            ckpt[k] = v
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return enc, P, latent_avg


def _images(n, size, seed=3):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("kind,legacy", [("e4e", False), ("psp", True)])
def test_e4e_and_psp_checkpoints_match_reference(tmp_path, kind, legacy):
    path = tmp_path / f"{kind}_ffhq_encode.pt"
    enc_sd, P, latent_avg = make_e4e_checkpoint(path, kind=kind, legacy=legacy)
    encoder, G, avg = load_e4e(path)
    assert encoder.cfg == E4EConfig(kind=kind, resolution=TINY_RES, widths=TINY_WIDTHS, style_dim=TINY_STYLE)
    assert encoder.n_styles == G.num_ws == 8 and not encoder.training
    torch.testing.assert_close(avg, latent_avg)
    torch.testing.assert_close(G.w_avg, P["w_avg"])
    x = _images(2, 256)  # the published input size: the style heads end at 1x1
    with torch.no_grad():
        ref = reference_encoder(enc_sd, x, kind)
        codes = encoder(x)
        ws = encoder.encode(x)
    assert codes.shape == (2, 8, TINY_STYLE)
    scale = ref.abs().max()
    torch.testing.assert_close(codes, ref, atol=1e-4 * scale, rtol=1e-4)
    torch.testing.assert_close(ws, ref + latent_avg, atol=1e-4 * scale, rtol=1e-4)
    # through the decoder to images, as pSp.forward does (noise fixed)
    with torch.no_grad():
        img = G.synthesis(ws, noise_mode="const")
        img_ref = reference_synthesis(P, ref + latent_avg)
    torch.testing.assert_close(img, img_ref, atol=2e-4 * img_ref.abs().max(), rtol=1e-4)


def test_e4e_encode_resizes_and_small_inputs_work(tmp_path):
    path = tmp_path / "e4e.pt"
    enc_sd, _, latent_avg = make_e4e_checkpoint(path)
    encoder, _, _ = load_e4e(path)
    x = _images(1, 64)
    with torch.no_grad():  # at 64px every head still ends at 1x1
        torch.testing.assert_close(encoder(x), reference_encoder(enc_sd, x), atol=1e-4, rtol=1e-4)
        big = _images(1, 320)
        want = encoder(F.interpolate(big, size=(256, 256), mode="bilinear", align_corners=False, antialias=True))
        torch.testing.assert_close(encoder.encode(big), want + latent_avg)
        with pytest.raises(ValueError, match="1x1"):
            encoder(big)  # the published view(-1, 512) would silently mix samples here


def test_e4e_latent_avg_forms(tmp_path, capsys):
    p = tmp_path / "a.pt"
    _, P, _ = make_e4e_checkpoint(p, latent_avg_shape="row")  # (512,) instead of (18, 512)
    encoder, G, avg = load_e4e(p)
    assert avg.shape == (8, TINY_STYLE)
    torch.testing.assert_close(avg, P["w_avg"][None].expand(8, -1))
    # no latent_avg and start_from_latent_avg: e4e uses the decoder's mean latent
    opts = {"encoder_type": "Encoder4Editing", "start_from_latent_avg": True}
    make_e4e_checkpoint(p, latent_avg=None, opts=opts)
    encoder, G, avg = load_e4e(p)
    assert "estimated" in capsys.readouterr().err
    torch.testing.assert_close(avg, G.w_avg[None].expand(8, -1))
    assert encoder.add_latent_avg
    # pSp trained without start_from_latent_avg: encode() returns the raw codes
    make_e4e_checkpoint(p, kind="psp", opts={"encoder_type": "GradualStyleEncoder", "start_from_latent_avg": False})
    encoder, _, _ = load_e4e(p)
    x = _images(1, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(x, resize=False), encoder(x))
    # no opts at all: the kind must be given
    make_e4e_checkpoint(p, opts=None)
    with pytest.raises(UserError, match="encoder_type") as e:
        load_e4e(p)
    _one_line_user_error(e)
    assert load_e4e(p, kind="e4e")[0].cfg.kind == "e4e"


def test_e4e_true_size_table():
    """The published FFHQ e4e: our modules have exactly its names and shapes, and the shapes give its config."""
    table = e4e_encoder_table()
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in E4EEncoder(E4EConfig()).state_dict().items()}
    assert ours == dict(table)
    n_params = sum(math.prod(s) for k, s in table.items() if not k.endswith(("running_mean", "running_var",
                                                                              "num_batches_tracked")))
    assert 260_000_000 < n_params < 275_000_000  # ~1.07 GB of float32: the 1.2 GB file with its decoder
    sd = {k: torch.empty(s, device="meta") for k, s in table.items()}
    assert encoder_config_from_state_dict(sd, "e4e") == E4EConfig()
    assert E4EConfig().n_styles == 18 and E4EConfig().taps == (6, 20, 23)
    assert E4EConfig(resolution=256).n_styles == 14


def _bad_e4e_cases(tmp_path):
    good = tmp_path / "good.pt"
    enc, P, avg = make_e4e_checkpoint(good)
    ckpt = torch.load(good, weights_only=True)
    state = ckpt["state_dict"]

    def variant(name, obj):
        p = tmp_path / f"{name}.pt"
        torch.save(obj, p)
        return p

    cases = [
        (variant("tensor", torch.zeros(3)), "not a dict"),
        (variant("nostate", {"opts": ckpt["opts"]}), "no 'state_dict'"),
        (variant("stylegan", {"g_ema": to_rosinality(P)}), "mm2latent convert"),
        (variant("noenc", dict(ckpt, state_dict={k: v for k, v in state.items() if k.startswith("decoder.")})),
         "no encoder"),
        (variant("nodec", dict(ckpt, state_dict={k: v for k, v in state.items() if k.startswith("encoder.")})),
         "no decoder"),
        (variant("missing", dict(ckpt, state_dict={k: v for k, v in state.items()
                                                   if k != "encoder.body.5.res_layer.3.weight"})),
         "body.5.res_layer.3.weight"),
        (variant("shape", dict(ckpt, state_dict=dict(state, **{"encoder.latlayer1.weight":
                                                                torch.zeros(32, 16, 1, 1)}))),
         "latlayer1.weight"),
        (variant("extra", dict(ckpt, state_dict=dict(state, **{"discriminator.w": torch.zeros(1)}))),
         "discriminator.w"),
        (variant("type", dict(ckpt, opts=dict(ckpt["opts"], encoder_type="BackboneEncoderUsingLastLayerIntoW"))),
         "BackboneEncoderUsingLastLayerIntoW"),
        (variant("avg", dict(ckpt, latent_avg=torch.zeros(5, 16))), "latent_avg"),
        (variant("size", dict(ckpt, opts=dict(ckpt["opts"], stylegan_size=1024))), "stylegan_size"),
        (variant("fewunits", dict(ckpt, state_dict={k: v for k, v in state.items()
                                                    if not k.startswith("encoder.body.23.")})), "50-layer"),
        (variant("nonstate", dict(ckpt, state_dict={"encoder.x": [1, 2]})), "not named tensors"),
    ]
    # decoder of another size than the encoder's heads
    P64 = make_params(resolution=64, channels={4: 8, 8: 8, 16: 8, 32: 8, 64: 8}, z_dim=16, w_dim=16, n_map=2)
    mixed = {k: v for k, v in state.items() if k.startswith("encoder.")}
    mixed.update((f"decoder.{k}", v) for k, v in to_rosinality(P64).items())
    cases.append((variant("mismatch", dict(ckpt, state_dict=mixed, latent_avg=None)), "style heads"))
    raw = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(raw[: len(raw) // 2])
    cases.append((cut, "truncated or corrupt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 50)
    cases.append((junk, "not a readable"))
    cases.append((tmp_path / "absent.pt", "not found"))
    return cases


def test_e4e_wrong_or_damaged_files_give_one_line_errors(tmp_path):
    for path, match in _bad_e4e_cases(tmp_path):
        with pytest.raises(UserError) as e:
            load_e4e(path)
        msg = _one_line_user_error(e)
        assert match in msg, (path.name, msg)


def _malicious_files(tmp_path, marker, payload_dict):
    zipped = tmp_path / "evil.pt"
    torch.save(payload_dict, zipped)
    legacy = tmp_path / "evil_legacy.pth"
    torch.save(payload_dict, legacy, _use_new_zipfile_serialization=False)
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(payload_dict, protocol=2))
    plain4 = tmp_path / "evil4.pkl"
    plain4.write_bytes(pickle.dumps(payload_dict, protocol=4))
    return [zipped, legacy, plain, plain4]


def _check_refusal(path, msg):
    assert "refusing" in msg and "nothing from it was run" in msg, (path.name, msg)
    if path.name != "evil.pkl":  # protocol 2 meets _codecs.encode (bytes) before the payload: named instead
        assert "posix.system" in msg, (path.name, msg)


def test_malicious_e4e_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    good = tmp_path / "good.pt"
    make_e4e_checkpoint(good)
    ckpt = torch.load(good, weights_only=True)
    payload = dict(ckpt, opts=dict(ckpt["opts"], hook=_Evil(marker)))
    for path in _malicious_files(tmp_path, marker, payload):
        with pytest.raises(UserError) as e:
            load_e4e(path)
        msg = _one_line_user_error(e)
        _check_refusal(path, msg)
        assert not marker.exists()


# --------------------------------------------------------------------------- BiSeNet layout


def bisenet_table(n_classes=19) -> OrderedDict:
    """``BiSeNet(n_classes=19).state_dict()`` of face-parsing.PyTorch: names and shapes."""
    t = OrderedDict()

    def conv(p, cout, cin, k):
        t[p + ".weight"] = (cout, cin, k, k)

    def cbr(p, cin, cout, k):
        conv(p + ".conv", cout, cin, k)
        _bn(t, p + ".bn", cout)

    r = "cp.resnet"
    conv(r + ".conv1", 64, 3, 7)
    _bn(t, r + ".bn1", 64)
    cin = 64
    for li, w in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p, c = f"{r}.layer{li}.{b}", (cin if b == 0 else w)
            conv(p + ".conv1", w, c, 3)
            _bn(t, p + ".bn1", w)
            conv(p + ".conv2", w, w, 3)
            _bn(t, p + ".bn2", w)
            if b == 0 and li > 1:
                conv(p + ".downsample.0", w, c, 1)
                _bn(t, p + ".downsample.1", w)
        cin = w
    for name, c in (("arm16", 256), ("arm32", 512)):
        cbr(f"cp.{name}.conv", c, 128, 3)
        conv(f"cp.{name}.conv_atten", 128, 128, 1)
        _bn(t, f"cp.{name}.bn_atten", 128)
    cbr("cp.conv_head32", 128, 128, 3)
    cbr("cp.conv_head16", 128, 128, 3)
    cbr("cp.conv_avg", 512, 128, 1)
    cbr("ffm.convblk", 256, 256, 1)
    conv("ffm.conv1", 64, 256, 1)
    conv("ffm.conv2", 256, 64, 1)
    for name, c, mid in (("conv_out", 256, 256), ("conv_out16", 128, 64), ("conv_out32", 128, 64)):
        cbr(name + ".conv", c, mid, 3)
        conv(name + ".conv_out", n_classes, mid, 1)
    return t


def _ref_cbr(x, sd, p, stride=1):
    w = sd[p + ".conv.weight"]
    return F.relu(_ref_bn(F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2), sd, p + ".bn"))


def _ref_basic(x, sd, p, stride):
    r = F.relu(_ref_bn(F.conv2d(x, sd[p + ".conv1.weight"], stride=stride, padding=1), sd, p + ".bn1"))
    r = _ref_bn(F.conv2d(r, sd[p + ".conv2.weight"], padding=1), sd, p + ".bn2")
    if p + ".downsample.0.weight" in sd:
        x = _ref_bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=stride), sd, p + ".downsample.1")
    return F.relu(x + r)


def _ref_arm(x, sd, p):
    feat = _ref_cbr(x, sd, p + ".conv")
    att = F.avg_pool2d(feat, feat.shape[2:])
    att = torch.sigmoid(_ref_bn(F.conv2d(att, sd[p + ".conv_atten.weight"]), sd, p + ".bn_atten"))
    return feat * att


def reference_bisenet(sd, x):
    """BiSeNet.forward(x)[0] of face-parsing.PyTorch (normalised input), written on the state dict."""
    H, W = x.shape[2:]
    r = "cp.resnet"
    y = F.relu(_ref_bn(F.conv2d(x, sd[r + ".conv1.weight"], stride=2, padding=3), sd, r + ".bn1"))
    y = F.max_pool2d(y, 3, 2, 1)
    feats = []
    for li in range(1, 5):
        y = _ref_basic(y, sd, f"{r}.layer{li}.0", 1 if li == 1 else 2)
        y = _ref_basic(y, sd, f"{r}.layer{li}.1", 1)
        feats.append(y)
    f8, f16, f32 = feats[1:]
    avg = _ref_cbr(F.avg_pool2d(f32, f32.shape[2:]), sd, "cp.conv_avg")
    avg_up = F.interpolate(avg, f32.shape[2:], mode="nearest")
    up32 = F.interpolate(_ref_arm(f32, sd, "cp.arm32") + avg_up, f16.shape[2:], mode="nearest")
    up32 = _ref_cbr(up32, sd, "cp.conv_head32")
    up16 = F.interpolate(_ref_arm(f16, sd, "cp.arm16") + up32, f8.shape[2:], mode="nearest")
    up16 = _ref_cbr(up16, sd, "cp.conv_head16")
    feat = _ref_cbr(torch.cat([f8, up16], 1), sd, "ffm.convblk")
    att = F.relu(F.conv2d(F.avg_pool2d(feat, feat.shape[2:]), sd["ffm.conv1.weight"]))
    att = torch.sigmoid(F.conv2d(att, sd["ffm.conv2.weight"]))
    fuse = feat * att + feat
    out = F.conv2d(_ref_cbr(fuse, sd, "conv_out.conv"), sd["conv_out.conv_out.weight"])
    return F.interpolate(out, (H, W), mode="bilinear", align_corners=True)


def _imagenet(images01):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images01 - mean) / std


def test_label_mapping_is_the_published_order():
    # prepropess_data.py: label l = atts[l - 1], 0 = background
    atts = ["skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
            "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat"]
    assert BISENET_TO_OURS == tuple(CLASS_INDEX[n] for n in ["background"] + atts)
    assert sorted(BISENET_TO_OURS) == list(range(19))
    order = bisenet_mod.OURS_FROM_BISENET
    assert all(BISENET_TO_OURS[order[i]] == i for i in range(19))
    assert CLASS_NAMES[BISENET_TO_OURS[10]] == "nose" and CLASS_NAMES[BISENET_TO_OURS[17]] == "hair"


@pytest.mark.parametrize("legacy", [True, False])
def test_bisenet_matches_reference_in_our_order(tmp_path, legacy):
    sd = random_state(bisenet_table(), seed=5)
    path = tmp_path / "79999_iter.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)  # the 2019 file is the legacy format
    parser = load_bisenet(path, input_size=None)
    assert not parser.training
    images = _images(2, 64)
    with torch.no_grad():
        ref = reference_bisenet(sd, _imagenet((images + 1) / 2))  # their order
        logits = parser(images)  # ours
        labels = parser.parse(images)
    lut = torch.tensor(BISENET_TO_OURS)
    ref_ours = torch.empty_like(ref)
    ref_ours[:, lut] = ref
    scale = ref.abs().max()
    torch.testing.assert_close(logits, ref_ours, atol=1e-4 * scale, rtol=1e-4)
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3 * scale
    assert labels.shape == (2, 64, 64) and labels.dtype == torch.long
    assert torch.equal(labels[clear], lut[ref.argmax(1)][clear]) and clear.float().mean() > 0.95
    # with resizing to the network size and back (the 512px of test.py, here 96 to stay cheap)
    parser.input_size = 96
    with torch.no_grad():
        x = F.interpolate((images + 1) / 2, size=(96, 96), mode="bilinear", align_corners=False, antialias=True)
        want = F.interpolate(reference_bisenet(sd, _imagenet(x)), size=(64, 64), mode="bilinear",
                             align_corners=False)
        got = parser(images)
    torch.testing.assert_close(got[:, lut], want, atol=1e-4 * want.abs().max(), rtol=1e-4)


def test_bisenet_default_input_size_is_512(tmp_path):
    assert bisenet_mod.INPUT_SIZE == 512
    sd = random_state(bisenet_table(), seed=1)
    path = tmp_path / "b.pth"
    torch.save(sd, path)
    assert load_bisenet(path).input_size == 512


def test_bisenet_wrong_or_damaged_files_give_one_line_errors(tmp_path):
    sd = random_state(bisenet_table(), seed=2)
    good = tmp_path / "good.pth"
    torch.save(sd, good)

    def variant(name, obj):
        p = tmp_path / f"{name}.pth"
        torch.save(obj, p)
        return p

    e4e = tmp_path / "e4e.pt"
    make_e4e_checkpoint(e4e)
    cases = [
        (variant("classes", random_state(bisenet_table(11), seed=2)), "11 classes"),
        (variant("missing", {k: v for k, v in sd.items() if k != "ffm.conv2.weight"}), "ffm.conv2.weight"),
        (variant("shape", dict(sd, **{"cp.arm16.conv_atten.weight": torch.zeros(128, 64, 1, 1)})), "conv_atten"),
        (variant("extra", dict(sd, **{"sp.conv1.conv.weight": torch.zeros(64, 3, 7, 7)})), "sp.conv1.conv.weight"),
        (variant("list", [1, 2, 3]), "not a state dict"),
        (e4e, "not a face-parsing.PyTorch BiSeNet"),
    ]
    raw = good.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(raw[: len(raw) // 3])
    cases.append((cut, "truncated or corrupt"))
    for path, match in cases:
        with pytest.raises(UserError) as e:
            load_bisenet(path)
        msg = _one_line_user_error(e)
        assert match in msg, (path.name, msg)
    # DataParallel-saved and old (no num_batches_tracked) files still load
    old = variant("old", OrderedDict((f"module.{k}", v) for k, v in sd.items() if "num_batches" not in k))
    load_bisenet(old)


def test_malicious_bisenet_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    sd = random_state(bisenet_table(), seed=3)
    payload = OrderedDict(sd)
    payload["cp.resnet.conv1.weight"] = _Evil(marker)
    for path in _malicious_files(tmp_path, marker, payload):
        with pytest.raises(UserError) as e:
            load_bisenet(path)
        msg = _one_line_user_error(e)
        _check_refusal(path, msg)
        assert not marker.exists()


def test_torchscript_archives_are_not_taken_for_state_dicts(tmp_path):
    path = tmp_path / "jit.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    for loader in (load_bisenet, load_e4e):
        with pytest.raises(UserError, match="TorchScript") as e:
            loader(path)
        _one_line_user_error(e)
