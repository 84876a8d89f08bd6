"""The MM2Latent authors' released autoencoders and MappingNet (``models/mm2latent_release.py``).

Their weights cannot be downloaded here, so each test writes a random checkpoint in the
layout PyTorch Lightning's ``Trainer`` saves (``epoch``, ``global_step``,
``pytorch-lightning_version``, ``state_dict`` keyed by the LightningModule's attributes,
``loops``, ``callbacks``, ``optimizer_states``, ``lr_schedulers``, optionally
``hyper_parameters`` as Lightning's ``AttributeDict``) from key/shape tables taken from their
module code (Open-Debin/MM2Latent at 1d381a2c), and checks our modules against a forward pass
written here with plain ``torch.nn.functional`` calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mm2latent.common.errors import UserError
from mm2latent.common.palette import CLASS_INDEX, CLASS_NAMES
from mm2latent.models.mm2latent_release import (
    grey_to_labels,
    labels_to_grey,
    load_release_autoencoder,
    load_release_mapping_net,
    mask_input,
    read_lightning_checkpoint,
    sketch_input,
)

# --------------------------------------------------------------------------- key/shape tables


def mask_ae_table():
    """models/greyseg_encoder/model_arch.py: encoder blocks (conv3x3, lrelu, conv2x2/2, lrelu); ConvT decoder."""
    t, c = [], 1
    for i, o in enumerate((16, 32, 32, 16, 8)):
        t += [(f"encoder.{i}.0.weight", (o, c, 3, 3)), (f"encoder.{i}.0.bias", (o,)),
              (f"encoder.{i}.2.weight", (o, o, 2, 2)), (f"encoder.{i}.2.bias", (o,))]
        c = o
    for j, o in enumerate((16, 32, 32, 16, 1)):
        t += [(f"decoder.{2 * j}.weight", (c, o, 3, 3)), (f"decoder.{2 * j}.bias", (o,))]
        c = o
    return t


def _bn(prefix, n):
    return [(f"{prefix}.weight", (n,)), (f"{prefix}.bias", (n,)), (f"{prefix}.running_mean", (n,)),
            (f"{prefix}.running_var", (n,)), (f"{prefix}.num_batches_tracked", ())]


def sketch_ae_table():
    """models/sketch_encoder/sketch_autoencoder.py (NaiveBlock registers bn1, bn2, then conv1, conv2)."""
    t = [("encoder.conv1.weight", (16, 1, 3, 3))] + _bn("encoder.bn1", 16)
    c = 16
    for i, o in enumerate((16, 32, 32, 16, 8), 1):
        p = f"encoder.naivenet{i}"
        t += _bn(f"{p}.bn1", o) + _bn(f"{p}.bn2", o) + [(f"{p}.conv1.weight", (o, c, 3, 3)),
                                                         (f"{p}.conv2.weight", (o, o, 2, 2))]
        c = o
    for i, o in enumerate((16, 32, 32, 16, 16), 1):
        p = f"decoder.naivenet{i}"
        t += _bn(f"{p}.bn1", o) + _bn(f"{p}.bn2", o) + [(f"{p}.conv1.weight", (c, o, 3, 3)),  # ConvTranspose
                                                         (f"{p}.conv2.weight", (o, o, 3, 3))]
        c = o
    return t + [("decoder.final_conv1.weight", (2, 16, 1, 1)), ("decoder.final_conv1.bias", (2,))]


def mapping_table(din=1024, feat=512, n_hidden=11):
    """models/text_seg2latent/models_arch.py: BatchNorm1d, Dropout, EqualizedLinear(+LReLU) x 12."""
    t = _bn("map_fn.net.0", din)
    idx, fin = 2, din
    for _ in range(1 + n_hidden):
        t += [(f"map_fn.net.{idx}.weight.weight", (feat, fin)), (f"map_fn.net.{idx}.bias", (feat,))]
        idx, fin = idx + 2, feat
    return t


def random_state(table, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for k, shape in table:
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1234)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            sd[k] = torch.randn(shape, generator=g) * 0.1
        elif ".bn" in k and k.endswith(".weight") or k == "map_fn.net.0.weight":
            sd[k] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif k.endswith(".weight.weight"):
            sd[k] = torch.randn(shape, generator=g)  # EqualizedWeight: N(0, 1), scaled at run time
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            sd[k] = torch.randn(shape, generator=g) / max(fan_in, 1) ** 0.5
    return sd


# --------------------------------------------------------------------------- Lightning file layout


def _fake_attribute_dict(monkeypatch):
    """A class that pickles as Lightning's ``lightning_fabric.utilities.data.AttributeDict``."""

    class AttributeDict(dict):
        def __getattr__(self, k):
            try:
                return self[k]
            except KeyError as e:
                raise AttributeError(k) from e

    AttributeDict.__module__ = "lightning_fabric.utilities.data"
    AttributeDict.__qualname__ = "AttributeDict"
    names = ["lightning_fabric", "lightning_fabric.utilities", "lightning_fabric.utilities.data"]
    for n in names:
        monkeypatch.setitem(sys.modules, n, types.ModuleType(n))
    sys.modules["lightning_fabric.utilities.data"].AttributeDict = AttributeDict
    return AttributeDict


def lightning_ckpt(sd, epoch=495, hparams=None, monitor="val_loss"):
    """The dict ``Trainer.save_checkpoint`` writes (Lightning 1.9 / 2.x, one Adam optimiser)."""
    params = [k for k in sd if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    adam = {
        "state": {i: {"step": torch.tensor(float(epoch * 10)), "exp_avg": torch.zeros_like(sd[k]),
                      "exp_avg_sq": torch.zeros_like(sd[k])} for i, k in enumerate(params)},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False,
                          "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                          "fused": None, "params": list(range(len(params)))}],
    }
    progress = {"total": {"ready": 10, "completed": 10, "started": 10, "processed": 10},
                "current": {"ready": 10, "completed": 10, "started": 10, "processed": 10}}
    ck_key = (f"ModelCheckpoint{{'monitor': '{monitor}', 'mode': 'min', 'every_n_train_steps': 0, "
              "'every_n_epochs': 1, 'train_time_interval': None}")
    ck = {
        "epoch": epoch,
        "global_step": epoch * 10,
        "pytorch-lightning_version": "1.9.4",
        "state_dict": sd,
        "loops": {
            "fit_loop": {"state_dict": {}, "epoch_progress": progress,
                         "epoch_loop.state_dict": {"_batches_that_stepped": epoch * 10},
                         "epoch_loop.batch_progress": dict(progress, is_last_batch=False)},
            "validate_loop": {"state_dict": {}, "dataloader_progress": progress},
            "test_loop": {"state_dict": {}}, "predict_loop": {"state_dict": {}},
        },
        "callbacks": {ck_key: {
            "monitor": monitor, "best_model_score": torch.tensor(0.00114), "best_model_path": "/runs/x.ckpt",
            "current_score": torch.tensor(0.00114), "dirpath": "/runs", "best_k_models": {"/runs/x.ckpt": torch.tensor(0.00114)},
            "kth_best_model_path": "/runs/x.ckpt", "kth_value": torch.tensor(0.00114), "last_model_path": "",
        }},
        "optimizer_states": [adam],
        "lr_schedulers": [],
    }
    if hparams is not None:
        ck["hparams_name"] = "kwargs"
        ck["hyper_parameters"] = hparams
    return ck


# --------------------------------------------------------------------------- independent forwards


def ref_mask_encode(sd, x):
    for i in range(5):
        x = F.leaky_relu(F.conv2d(x, sd[f"encoder.{i}.0.weight"], sd[f"encoder.{i}.0.bias"], padding=1), 0.01)
        x = F.leaky_relu(F.conv2d(x, sd[f"encoder.{i}.2.weight"], sd[f"encoder.{i}.2.bias"], stride=2), 0.01)
    return x


def ref_mask_decode(sd, z):
    for j in range(5):
        z = F.conv_transpose2d(z, sd[f"decoder.{2 * j}.weight"], sd[f"decoder.{2 * j}.bias"], stride=2, padding=1,
                               output_padding=1)
        z = torch.sigmoid(z) if j == 4 else F.leaky_relu(z, 0.01)
    return z


def _bnf(sd, p, x):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def ref_sketch(sd, x, act=lambda t: F.leaky_relu(t, 0.01)):
    x = act(_bnf(sd, "encoder.bn1", F.conv2d(x, sd["encoder.conv1.weight"], padding=1)))
    for i in range(1, 6):
        p = f"encoder.naivenet{i}"
        x = act(_bnf(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"], padding=1)))
        x = act(_bnf(sd, f"{p}.bn2", F.conv2d(x, sd[f"{p}.conv2.weight"], stride=2)))
    code = x
    for i in range(1, 6):
        p = f"decoder.naivenet{i}"
        x = act(_bnf(sd, f"{p}.bn1", F.conv_transpose2d(x, sd[f"{p}.conv1.weight"], stride=2, padding=1,
                                                        output_padding=1)))
        x = act(_bnf(sd, f"{p}.bn2", F.conv2d(x, sd[f"{p}.conv2.weight"], padding=1)))
    return code, F.conv2d(x, sd["decoder.final_conv1.weight"], sd["decoder.final_conv1.bias"])


def ref_mapping(sd, x):
    x = _bnf(sd, "map_fn.net.0", x)
    idx = 2
    while f"map_fn.net.{idx}.bias" in sd:
        w = sd[f"map_fn.net.{idx}.weight.weight"]
        x = F.leaky_relu(F.linear(x, w / w.shape[1] ** 0.5, sd[f"map_fn.net.{idx}.bias"]), 0.2)
        idx += 2
    return x


# --------------------------------------------------------------------------- tests


def test_mask_autoencoder_round_trip(tmp_path):
    sd = random_state(mask_ae_table(), seed=1)
    path = tmp_path / "used_epoch495_train0p00124_val0p00114.ckpt"
    torch.save(lightning_ckpt(sd), path)
    ae = load_release_autoencoder(path, "mask")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 19, size=(2, 256, 256)).astype(np.uint8)
    x = mask_input(labels)
    assert x.shape == (2, 1, 256, 256)
    with torch.no_grad():
        code = ae.encode(x)
        ref = ref_mask_encode(sd, x)
        assert code.shape == (2, 512)
        torch.testing.assert_close(code, ref.reshape(2, -1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ae(x), ref_mask_decode(sd, ref), rtol=1e-5, atol=1e-6)


def test_sketch_autoencoder_round_trip(tmp_path):
    sd = random_state(sketch_ae_table(), seed=2)
    path = tmp_path / "used_epoch458_train0p11285_val0p1277.ckpt"
    torch.save(lightning_ckpt(sd, epoch=458), path)
    ae = load_release_autoencoder(path, "sketch")
    rng = np.random.default_rng(1)
    edges = (rng.random((2, 256, 256)) < 0.1).astype(np.uint8) * 255
    x = sketch_input(edges)
    assert float(x.max()) == pytest.approx(255 / 250)
    with torch.no_grad():
        code, logits = ref_sketch(sd, x)
        torch.testing.assert_close(ae.encode(x), code.reshape(2, -1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ae(x), logits, rtol=1e-5, atol=1e-5)
    assert ae.encode(x).shape == (2, 512)


def test_sketch_act_type_from_lightning_hyper_parameters(tmp_path, monkeypatch):
    AttributeDict = _fake_attribute_dict(monkeypatch)
    sd = random_state(sketch_ae_table(), seed=3)
    hp = AttributeDict(lr=1e-2, val_savepath="", decoder_type="naive", onehot=True, act_type="silu",
                       args=argparse.Namespace(img_size=256, batch=32))
    path = tmp_path / "sketch.ckpt"
    torch.save(lightning_ckpt(sd, hparams=hp), path)
    ck = read_lightning_checkpoint(path)
    assert type(ck["hyper_parameters"]) is dict
    assert ck["hyper_parameters"]["args"] == {"img_size": 256, "batch": 32}
    ae = load_release_autoencoder(path, "sketch")
    x = sketch_input(np.eye(256, dtype=bool))
    with torch.no_grad():
        code, _ = ref_sketch(sd, x, act=F.silu)
        torch.testing.assert_close(ae.encode(x), code.flatten(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("legacy", [False, True])
def test_mapping_net_round_trip(tmp_path, legacy):
    sd = random_state(mapping_table(), seed=4)
    path = tmp_path / "epoch=267-loss-l1=0.2001-cos=0.2274.ckpt"
    torch.save(lightning_ckpt(sd, epoch=267, monitor="loss-l1"), path, _use_new_zipfile_serialization=not legacy)
    net = load_release_mapping_net(path)
    assert net.cfg.n_layers == 12 and net.cfg.text_dim == 512 and net.cfg.other_dim == 512
    g = torch.Generator().manual_seed(5)
    text = F.normalize(torch.randn(3, 512, generator=g), dim=1)
    mask = torch.randn(3, 512, generator=g)
    with torch.no_grad():
        w = net(text, mask)
        torch.testing.assert_close(w, ref_mapping(sd, torch.cat([text, mask], 1)), rtol=1e-5, atol=1e-5)
    assert w.shape == (3, 512)


def test_grey_level_convention():
    # their grey level = 10 * facer celebm label; FaRL pairs each name with a CelebAMask-HQ part file
    facer = ["background", "neck", "face", "cloth", "rr", "lr", "rb", "lb", "re", "le", "nose", "imouth", "llip",
             "ulip", "hair", "eyeg", "hat", "earr", "neckl"]
    part = ["background", "neck", "skin", "cloth", "l_ear", "r_ear", "l_brow", "r_brow", "l_eye", "r_eye", "nose",
            "mouth", "l_lip", "u_lip", "hair", "eye_g", "hat", "ear_r", "neck_l"]
    grey = np.array([[10 * i for i in range(19)]], dtype=np.uint8)
    labels = grey_to_labels(grey)
    assert [CLASS_NAMES[v] for v in labels[0]] == part
    assert len(facer) == len(part) == 19
    ours = np.arange(19, dtype=np.uint8).reshape(1, 19)
    back = labels_to_grey(ours)
    assert [facer[v // 10] for v in back[0]] == [dict(zip(part, facer))[n] for n in CLASS_NAMES]
    rng = np.random.default_rng(2)
    m = rng.integers(0, 19, size=(64, 48)).astype(np.uint8)
    np.testing.assert_array_equal(grey_to_labels(labels_to_grey(m)), m)
    assert labels_to_grey(np.full((2, 2), CLASS_INDEX["skin"], np.uint8)).max() == 20
    # an RGB-saved grey PNG is accepted; a resized one is refused in one line
    np.testing.assert_array_equal(grey_to_labels(np.repeat(labels_to_grey(m)[..., None], 3, -1)), m)
    with pytest.raises(UserError) as e:
        grey_to_labels(np.array([[0, 15]], dtype=np.uint8))
    assert "15" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError):
        grey_to_labels(np.array([[190]], dtype=np.uint8))
    with pytest.raises(UserError):
        labels_to_grey(np.array([[19]], dtype=np.uint8))


def test_mask_input_matches_their_pil_resize():
    rng = np.random.default_rng(3)
    m = rng.integers(0, 19, size=(512, 512)).astype(np.uint8)
    grey = labels_to_grey(m)
    pil = np.asarray(Image.fromarray(grey).resize((256, 256), Image.NEAREST)).astype(np.float32) / 255
    np.testing.assert_array_equal(mask_input(m)[0, 0].numpy(), pil)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("where", ["top", "hparams"])
def test_malicious_checkpoint_is_refused(tmp_path, monkeypatch, legacy, where):
    AttributeDict = _fake_attribute_dict(monkeypatch)
    marker = tmp_path / "pwned"
    sd = random_state(mask_ae_table())
    ck = lightning_ckpt(sd, hparams=AttributeDict(lr=1e-3, x=_Evil(marker)) if where == "hparams" else None)
    if where == "top":
        ck["callbacks"]["evil"] = _Evil(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ck, path, _use_new_zipfile_serialization=not legacy)
    for load in (lambda: load_release_autoencoder(path, "mask"), lambda: load_release_mapping_net(path)):
        with pytest.raises(UserError) as e:
            load()
        assert "refusing" in str(e.value) and "system" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


class Opts(argparse.Namespace):
    pass


def test_other_globals_are_still_refused(tmp_path):
    # an argparse.Namespace subclass (or any other class) is not a Lightning container
    path = tmp_path / "opts.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Opts(a=1)}, path)
    with pytest.raises(UserError, match="refusing"):
        read_lightning_checkpoint(path)


def test_damaged_and_wrong_files_are_one_line(tmp_path):
    sd = random_state(mask_ae_table())
    good = tmp_path / "mask.ckpt"
    torch.save(lightning_ckpt(sd), good)
    cases = {}
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = (lambda: load_release_autoencoder(trunc, "mask"), "truncated or corrupt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    cases["garbage"] = (lambda: load_release_autoencoder(garbage, "mask"), "not a readable")
    cases["missing"] = (lambda: load_release_autoencoder(tmp_path / "nope.ckpt", "mask"), "not found")
    bare = tmp_path / "bare.ckpt"
    torch.save(sd, bare)  # a bare state dict, not Trainer's layout
    cases["bare"] = (lambda: load_release_autoencoder(bare, "mask"), "not a PyTorch Lightning checkpoint")
    cases["sketch_as_mask"] = (lambda: load_release_autoencoder(good, "sketch"), "does not match")
    cases["ae_as_mapping"] = (lambda: load_release_mapping_net(good), "does not match")
    cases["kind"] = (lambda: load_release_autoencoder(good, "coeff"), "must be 'mask' or 'sketch'")
    wrong = OrderedDict(sd)
    wrong["encoder.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    shape = tmp_path / "shape.ckpt"
    torch.save(lightning_ckpt(wrong), shape)
    cases["shape"] = (lambda: load_release_autoencoder(shape, "mask"), "has shape")
    extra = OrderedDict(sd)
    extra["head.weight"] = torch.zeros(2)
    ext = tmp_path / "extra.ckpt"
    torch.save(lightning_ckpt(extra), ext)
    cases["extra"] = (lambda: load_release_autoencoder(ext, "mask"), "unexpected")
    msd = random_state(mapping_table())
    del msd["map_fn.net.6.bias"]
    mp = tmp_path / "map_missing.ckpt"
    torch.save(lightning_ckpt(msd), mp)
    cases["mapping_missing"] = (lambda: load_release_mapping_net(mp), "does not match")
    for name, (fn, text) in cases.items():
        with pytest.raises(UserError) as e:
            fn()
        assert text in str(e.value), (name, str(e.value))
        assert "\n" not in str(e.value), name


def test_wrong_inputs_are_one_line(tmp_path):
    sd = random_state(mask_ae_table())
    path = tmp_path / "m.ckpt"
    torch.save(lightning_ckpt(sd), path)
    ae = load_release_autoencoder(path, "mask")
    with pytest.raises(UserError):
        ae.encode(torch.zeros(1, 19, 256, 256))
    with pytest.raises(UserError):
        sketch_input(np.zeros((4, 4), dtype=np.float32))
    net = load_release_mapping_net(_mapping_file(tmp_path))
    with pytest.raises(UserError):
        net(torch.zeros(1, 512), torch.zeros(1, 256))


def _mapping_file(tmp_path):
    p = tmp_path / "map.ckpt"
    torch.save(lightning_ckpt(random_state(mapping_table())), p)
    return p
