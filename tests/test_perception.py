"""Perception stack: parser, analyzer, autoencoders, metrics, trainers, loader, CLI.

Tiny configs at 32-64 px on one thread, so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mm2latent.common.errors import UserError
from mm2latent.common.palette import NUM_CLASSES, PALETTE
from mm2latent.eval import perception as ev
from mm2latent.models.analyzer import AnalyzerConfig, FaceAnalyzer
from mm2latent.models import metrics
from mm2latent.models.autoencoders import (
    CoeffAE,
    CoeffAEConfig,
    MaskAE,
    MaskAEConfig,
    SketchAE,
    SketchAEConfig,
    augment_mask_pair,
    augment_sketch_pair,
    blobby_mask,
    random_affine,
    warp,
    warp_labels,
)
from mm2latent.models.parser import FaceParser, ParserConfig
from mm2latent.models.registry import load_module, load_module_file, load_perception, save_module
from mm2latent.train import perception as tp
from mm2latent.train import state as st

from helpers import REAL_SKIP_REASON, real_samples_dir  # noqa: E402

REAL = real_samples_dir()
SIZE = 64
N = 48

TINY_MODEL = {
    "parser": {"base": 4, "depth": 3, "max_width": 16},
    "analyzer": {"stem": 8, "widths": [16, 16], "hidden": 32},
    "mask_ae": {"base": 4, "max_width": 16, "latent_dim": 32, "bottom": 4},
    "sketch_ae": {"base": 4, "max_width": 16, "latent_dim": 32, "bottom": 4},
    "coeff_ae": {"hidden": 16, "latent_dim": 32},
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A small world cache in the CachedWorldDataset format (48 samples at 64 px)."""
    from helpers import write_world_cache

    return write_world_cache(tmp_path_factory.mktemp("cache") / "c", N, SIZE)


def _opts(task, cache, out, **kw):
    base = dict(task=task, data=str(cache), out=str(out), model=TINY_MODEL[task], warmup=2, log_every=1,
                batch=8 if task != "coeff_ae" else 32)
    base.update(kw)
    return tp.PerceptionTrainOptions(**base)


def _tiny(kind, size=32):
    from mm2latent.models.registry import build_model

    cfg = dict(TINY_MODEL[kind])
    if kind != "coeff_ae":
        cfg["size"] = size
    return build_model(kind, cfg)


# --------------------------------------------------------------------------- models


def test_parser_shapes_and_gradients():
    m = FaceParser(ParserConfig(base=4, depth=3, max_width=16, size=32))
    x = torch.rand(2, 3, 32, 32, requires_grad=True) * 2 - 1
    x.retain_grad()
    out = m(x)
    assert out.shape == (2, NUM_CLASSES, 32, 32)
    out.logsumexp(1).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert m.predict(x.detach()).shape == (2, 32, 32)
    with pytest.raises(ValueError):
        m(torch.zeros(1, 3, 30, 30))
    full = FaceParser(ParserConfig(base=4, depth=2, max_width=8, full_res=True))
    assert full(torch.zeros(1, 3, 16, 16)).shape == (1, NUM_CLASSES, 16, 16)


def test_analyzer_shapes_and_gradients():
    m = FaceAnalyzer(AnalyzerConfig(stem=4, widths=(8, 16), hidden=16, size=32))
    x = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_()
    a, c = m(x)
    assert a.shape == (3, 37) and c.shape == (3, 13)
    (a.sum() + c.sum()).backward()
    assert x.grad.abs().sum() > 0
    p, cc = m.predict(x.detach())
    assert ((p >= 0) & (p <= 1)).all() and cc.abs().max() <= 1


def test_autoencoder_shapes():
    mae = MaskAE(MaskAEConfig(size=32, base=4, max_width=16, latent_dim=48, bottom=4))
    idx = torch.randint(0, NUM_CLASSES, (2, 32, 32))
    oh = F.one_hot(idx, NUM_CLASSES).permute(0, 3, 1, 2).float()
    mae.eval()
    z = mae.encode(oh)
    assert z.shape == (2, 48)
    assert torch.allclose(z, mae.encode(idx))  # index maps are accepted too
    assert mae.decode(z).shape == (2, NUM_CLASSES, 32, 32)
    assert mae.reconstruct(idx).shape == (2, 32, 32)
    oh.requires_grad_()
    mae(oh).sum().backward()
    assert oh.grad.abs().sum() > 0

    with pytest.raises(ValueError, match="multiple"):
        MaskAE(MaskAEConfig(size=32, latent_dim=20, bottom=4))
    sae = SketchAE(SketchAEConfig(size=32, base=4, max_width=16, latent_dim=20, latent="dense"))
    sk = (torch.rand(2, 1, 32, 32) > 0.9).float()
    assert sae.encode(sk).shape == (2, 20)
    assert sae(sk).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError):
        sae.encode(torch.zeros(2, 1, 16, 16))

    cae = CoeffAE(CoeffAEConfig(hidden=16, latent_dim=12))
    c = torch.rand(5, 13) * 2 - 1
    assert cae.encode(c).shape == (5, 12) and cae(c).shape == (5, 13)


def test_default_configs_are_small():
    from mm2latent.models.registry import build_model

    for kind in ("parser", "analyzer", "mask_ae", "sketch_ae", "coeff_ae"):
        n = sum(p.numel() for p in build_model(kind).parameters())
        assert n * 2 < 5e6 * 1.5, (kind, n)  # float16 bytes, about 5 MB or less each


# --------------------------------------------------------------------------- metrics


def test_confusion_and_iou_known_case():
    truth = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 1]])
    cm = metrics.confusion_matrix(pred, truth, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    iou = metrics.iou_per_class(cm)
    # class 0: tp 2, fp 1, fn 1 -> 2/4; class 1: tp 3, fp 1 -> 3/4; class 2: tp 1, fn 1 -> 1/2; class 3 absent
    assert np.allclose(iou[:3], [0.5, 0.75, 0.5]) and math.isnan(iou[3])
    assert metrics.mean_iou(cm) == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    # a class only predicted (never true) counts with IoU 0
    cm2 = metrics.confusion_matrix(torch.tensor([3, 0]), torch.tensor([0, 0]), 4)
    iou2 = metrics.iou_per_class(cm2)
    assert iou2[0] == 0.5 and iou2[3] == 0.0 and math.isnan(iou2[1])


def test_balanced_accuracy_known_case():
    t = np.array([[1, 0, 1], [1, 0, 1], [0, 0, 1], [0, 0, 1]], bool)
    p = np.array([[1, 1, 1], [0, 0, 1], [0, 0, 0], [0, 0, 1]], bool)
    ba = metrics.balanced_accuracy(p, t)
    # col 0: TPR 1/2, TNR 2/2 -> 0.75; col 1: only negatives, TNR 3/4; col 2: only positives, TPR 3/4
    assert np.allclose(ba, [0.75, 0.75, 0.75])
    assert metrics.balanced_accuracy(np.array([1, 0]), np.array([1, 0]))[0] == 1.0


def test_edge_fscore_tolerance():
    t = torch.zeros(1, 1, 8, 8)
    t[0, 0, 4, 1:7] = 1  # a 6-pixel horizontal line
    p = torch.zeros_like(t)
    p[0, 0, 5, 1:7] = 1  # the same line, one pixel lower
    assert metrics.edge_fscore(p, t, tol=1) == pytest.approx(1.0)
    assert metrics.edge_fscore(p, t, tol=0) == pytest.approx(0.0)
    p2 = t.clone()
    p2[0, 0, 0, 0] = 1  # one spurious far pixel: precision 6/7, recall 1
    f = metrics.edge_fscore(p2, t, tol=1)
    assert f == pytest.approx(2 * (6 / 7) / (6 / 7 + 1))
    c = metrics.edge_match_counts(p2, t, 1)
    assert c.tolist() == [6, 7, 6, 6]


def test_coeff_mae_raw_units():
    from mm2latent.world.params import COEFF_NAMES

    t = np.zeros((2, 13), np.float32)
    p = t.copy()
    p[:, 0] = 0.1  # yaw range 60 degrees -> 0.1 normalised = 3 degrees
    p[0, 3] = 0.5  # smile range 1 -> 0.25, averaged over 2 rows = 0.125
    mae = metrics.coeff_mae_raw(p, t)
    assert COEFF_NAMES[0] == "yaw" and mae[0] == pytest.approx(3.0, abs=1e-5)
    assert mae[3] == pytest.approx(0.125, abs=1e-6) and mae[1] == 0


def test_jsonable_nan_to_null():
    s = json.dumps(ev.jsonable({"a": float("nan"), "b": [np.float32(1.5), np.int64(2)], "c": {"d": float("inf")}}))
    assert json.loads(s) == {"a": None, "b": [1.5, 2], "c": {"d": None}}


# --------------------------------------------------------------------------- augmentations


def _label_image(mask: torch.Tensor) -> torch.Tensor:
    """An image whose colours are the palette colours of ``mask``, in [-1, 1]."""
    pal = torch.from_numpy(PALETTE.astype(np.float32)) / 127.5 - 1
    return pal[mask].permute(0, 3, 1, 2)


def test_image_and_mask_warp_consistently(cache):
    from mm2latent.world.cache import CachedWorldDataset

    d = CachedWorldDataset(cache)
    b = d.batch(np.arange(8))
    mask = b["mask"]
    g = torch.Generator().manual_seed(0)
    theta = random_affine(8, g, shift=0.08, rotate=12, scale=(0.85, 1.15))
    img_w = warp(_label_image(mask), theta, mode="bilinear")
    mask_w = warp_labels(mask, theta)
    # decode the warped colour image back to labels by nearest palette colour
    pal = torch.from_numpy(PALETTE.astype(np.float32)) / 127.5 - 1
    dist = ((img_w.permute(0, 2, 3, 1)[..., None, :] - pal) ** 2).sum(-1)
    decoded = dist.argmin(-1)
    # away from label boundaries (where bilinear blends colours) they must agree
    mf = mask_w[:, None].float()
    interior = (F.max_pool2d(mf, 3, 1, 1) == -F.max_pool2d(-mf, 3, 1, 1))[:, 0]
    agree = (decoded == mask_w)[interior].float().mean().item()
    assert interior.float().mean() > 0.7 and agree > 0.995
    other = warp_labels(mask, random_affine(8, g, shift=0.08, rotate=12, scale=(0.85, 1.15)))
    assert (decoded == other)[interior].float().mean().item() < agree - 0.05  # a different warp does not
    assert (mask_w != mask).any()  # it did move
    # identity (p=0) leaves labels untouched
    th0 = random_affine(8, g, p=0.0)
    assert torch.equal(warp_labels(mask, th0), mask)
    # the trainer's full parser augmentation keeps labels valid and in step with the image
    img_a, mask_a = tp.augment_image_mask(b["image"], mask, torch.Generator().manual_seed(1), p_affine=1.0)
    assert img_a.shape == b["image"].shape and mask_a.shape == mask.shape
    assert img_a.min() >= -1 and img_a.max() <= 1 and mask_a.max() < NUM_CLASSES
    img_b, mask_b = tp.augment_image_mask(_label_image(mask), mask, torch.Generator().manual_seed(1), p_affine=1.0)
    assert torch.equal(mask_b, mask_a)  # same generator, same geometry


def test_integer_shift_moves_mask_with_image(cache):
    from mm2latent.world.cache import CachedWorldDataset

    mask = CachedWorldDataset(cache).batch(np.arange(6))["mask"]
    img, m2 = tp.integer_shift(_label_image(mask), torch.Generator().manual_seed(2), 4, mask)
    pal = torch.from_numpy(PALETTE.astype(np.float32)) / 127.5 - 1
    decoded = ((img.permute(0, 2, 3, 1)[..., None, :] - pal) ** 2).sum(-1).argmin(-1)
    assert torch.equal(decoded, m2) and not torch.equal(m2, mask)


def test_mask_and_sketch_augmentations(cache):
    from mm2latent.world.cache import CachedWorldDataset

    d = CachedWorldDataset(cache)
    b = d.batch(np.arange(8))
    g = torch.Generator().manual_seed(3)
    bl = blobby_mask(b["mask"], g)
    assert bl.dtype == torch.long and bl.min() >= 0 and bl.max() < NUM_CLASSES
    same = (bl == b["mask"]).float().mean().item()
    assert 0.75 < same < 1.0  # boundaries move, the layout stays
    inp, tgt = augment_mask_pair(b["mask"], torch.Generator().manual_seed(4), p_affine=1.0, p_blobby=0.0)
    assert torch.equal(inp, tgt)
    sk_in, sk_t = augment_sketch_pair(b["sketch"], torch.Generator().manual_seed(5), p_affine=1.0, p_rough=1.0)
    assert set(torch.unique(sk_in).tolist()) <= {0.0, 1.0} and set(torch.unique(sk_t).tolist()) <= {0.0, 1.0}
    assert sk_in.shape == b["sketch"].shape
    # deterministic for a given generator seed
    a1 = augment_mask_pair(b["mask"], torch.Generator().manual_seed(9))
    a2 = augment_mask_pair(b["mask"], torch.Generator().manual_seed(9))
    assert torch.equal(a1[0], a2[0]) and torch.equal(a1[1], a2[1])


# --------------------------------------------------------------------------- training


def _losses(run_dir: Path) -> list[float]:
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


@pytest.mark.parametrize("task", ["parser", "mask_ae", "analyzer"])
def test_tiny_training_reduces_loss(task, cache, tmp_path):
    steps = 30 if task != "analyzer" else 60
    tr = tp.train_perception(_opts(task, cache, tmp_path / task, steps=steps, lr=1e-2 if task != "analyzer" else 2e-3,
                                   augment=False), quiet=True)
    losses = _losses(tmp_path / task)
    assert len(losses) == steps and tr.step == steps
    assert np.mean(losses[-5:]) < (0.8 if task != "analyzer" else 0.85) * np.mean(losses[:3])
    # the exported shipped weights load and agree with the trained model
    m = load_module_file(tmp_path / task / f"{task}.safetensors", task)
    x = torch.from_numpy(np.load(cache / "images.npy")[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    tr.model.eval()
    if task == "parser":
        assert (m(x).argmax(1) == tr.model(x).argmax(1)).float().mean() > 0.98
    elif task == "analyzer":
        assert torch.allclose(m(x)[0], tr.model(x)[0], atol=0.05)


def test_sketch_and_coeff_trainers_run(cache, tmp_path):
    for task in ("sketch_ae", "coeff_ae"):
        tr = tp.train_perception(_opts(task, cache, tmp_path / task, steps=6), quiet=True)
        assert tr.step == 6 and (tmp_path / task / f"{task}.safetensors").exists()


def test_resume_is_exact(cache, tmp_path):
    opts_a = _opts("mask_ae", cache, tmp_path / "a", steps=6, ckpt_minutes=100)
    a = tp.train_perception(opts_a, quiet=True)
    opts_b = _opts("mask_ae", cache, tmp_path / "b", steps=6, ckpt_minutes=100)
    b = tp.PerceptionTrainer(opts_b)
    for _ in range(3):
        b.train_step()
    st.write_checkpoint(tmp_path / "b", b.step, *b.state(), kind="train_mask_ae")
    del b
    b2 = tp.train_perception(opts_b, resume=True, quiet=True)
    assert b2.step == 6
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b2.model.state_dict().items()):
        assert torch.equal(va, vb), k
    # the checkpoint round trip restores optimizer state bit-exactly
    t1, m1 = b2.state()
    c = tp.PerceptionTrainer(opts_b)
    c.load_state(t1, json.loads(json.dumps(m1)))
    t2, _ = c.state()
    assert t1.keys() == t2.keys() and all(torch.equal(t1[k], t2[k]) for k in t1)
    # a fresh run into a used directory is refused without --resume
    with pytest.raises(UserError, match="--resume"):
        tp.train_perception(opts_b, quiet=True)
    # another task's run directory is refused
    with pytest.raises(UserError, match="mask_ae"):
        tp.train_perception(_opts("parser", cache, tmp_path / "b", steps=2), resume=True, quiet=True)


def test_init_fine_tunes_exported_weights(cache, tmp_path):
    """--init starts from exported weights (their architecture, their values),
    records the provenance, and a non-matching file is refused in one line."""
    src = tp.train_perception(_opts("mask_ae", cache, tmp_path / "src", steps=4),
                              quiet=True)
    exported = tmp_path / "src" / "mask_ae.safetensors"
    ft = tp.PerceptionTrainer(_opts("mask_ae", cache, tmp_path / "ft", steps=2, init=str(exported), model={}))
    assert ft.model.config == src.model.config  # architecture from the file, not the defaults
    ref = load_module_file(exported, "mask_ae").state_dict()
    for k, v in ft.model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert ft.model.training and all(p.requires_grad for p in ft.model.parameters())
    tr = tp.train_perception(_opts("mask_ae", cache, tmp_path / "ft2", steps=3, init=str(exported), model={}),
                            quiet=True)
    meta = json.loads((tmp_path / "ft2" / "mask_ae.json").read_text())["trained"]
    assert meta["init"]["trained"]["steps"] == 4 and meta["steps"] == 3 == tr.step
    assert meta["total_images_seen"] == src.images_seen + tr.images_seen
    with pytest.raises(UserError, match="--model"):
        tp.train_perception(_opts("mask_ae", cache, tmp_path / "x", steps=1, init=str(exported), model={"base": 8}),
                            quiet=True)
    with pytest.raises(UserError):  # weights of another model kind
        tp.train_perception(_opts("parser", cache, tmp_path / "y", steps=1, init=str(exported), model={}),
                            quiet=True)


def test_freeze_encoder_trains_a_wider_decoder_behind_the_same_code(cache, tmp_path):
    """--freeze-encoder: the exported encoder is the --init file's bit for bit
    (so embeddings MappingNet was trained on stay valid), its batch-norm
    statistics do not drift, the (wider) decoder trains, and resume is exact."""
    tp.train_perception(_opts("mask_ae", cache, tmp_path / "src", steps=4), quiet=True)
    exported = tmp_path / "src" / "mask_ae.safetensors"
    wider = {"dec_base": 8, "dec_max_width": 24}
    kw = dict(init=str(exported), model=wider, freeze_encoder=True, lr=1e-2, augment=False)
    tr = tp.train_perception(_opts("mask_ae", cache, tmp_path / "ft", steps=30, **kw), quiet=True)
    losses = _losses(tmp_path / "ft")
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:3])
    ref = load_module_file(exported, "mask_ae")
    out = load_module_file(tmp_path / "ft" / "mask_ae.safetensors", "mask_ae")
    assert out.config.dec_widths() != ref.config.dec_widths() and out.config.widths() == ref.config.widths()
    masks = torch.from_numpy(np.load(cache / "masks.npy")[:6].astype(np.int64))
    with torch.no_grad():
        assert torch.equal(out.encode(masks), ref.encode(masks))
    enc_keys = [k for k in ref.state_dict() if k.startswith(("enc.", "to_code."))]
    assert enc_keys and all(torch.equal(out.state_dict()[k], ref.state_dict()[k]) for k in enc_keys)
    meta = json.loads((tmp_path / "ft" / "mask_ae.json").read_text())["trained"]
    assert meta["encoder_frozen"] is True
    # only decoder parameters are optimised
    n_opt = sum(p.numel() for g in tr.opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for n, p in tr.model.named_parameters() if not n.startswith(("enc.", "to_code.")))
    # exact resume of a frozen-encoder run
    a = tp.train_perception(_opts("mask_ae", cache, tmp_path / "a", steps=6, ckpt_minutes=100, **kw), quiet=True)
    ob = _opts("mask_ae", cache, tmp_path / "b", steps=6, ckpt_minutes=100, **kw)
    b = tp.PerceptionTrainer(ob)
    for _ in range(3):
        b.train_step()
    st.write_checkpoint(tmp_path / "b", b.step, *b.state(), kind="train_mask_ae")
    b2 = tp.train_perception(ob, resume=True, quiet=True)
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b2.model.state_dict().items()):
        assert torch.equal(va, vb), k
    # refused: no --init, an encoder field, a task without a spatial encoder
    with pytest.raises(UserError, match="--init"):
        tp.train_perception(_opts("mask_ae", cache, tmp_path / "x1", steps=1, freeze_encoder=True), quiet=True)
    with pytest.raises(UserError, match="base"):
        tp.train_perception(_opts("mask_ae", cache, tmp_path / "x2", steps=1, init=str(exported),
                                  model={"base": 8}, freeze_encoder=True), quiet=True)
    with pytest.raises(UserError, match="freeze-encoder"):
        tp.train_perception(_opts("parser", cache, tmp_path / "x3", steps=1, init=str(exported), model={},
                                  freeze_encoder=True), quiet=True)


def test_refinement_stage_starts_neutral_and_trains(cache, tmp_path):
    """A full-resolution refinement stage added to trained AE weights (``--init`` with
    ``--model '{"refine": C}'``) leaves the output unchanged before training (its last conv
    starts at zero), then trains jointly with the rest; --augment-p is validated and recorded."""
    tp.train_perception(_opts("mask_ae", cache, tmp_path / "src", steps=4), quiet=True)
    exported = tmp_path / "src" / "mask_ae.safetensors"
    ref = load_module_file(exported, "mask_ae").eval()
    ft = tp.PerceptionTrainer(_opts("mask_ae", cache, tmp_path / "ft", steps=1, init=str(exported),
                                    model={"refine": 8}))
    masks = torch.from_numpy(np.load(cache / "masks.npy")[:4].astype(np.int64))
    x = F.one_hot(masks, 19).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        assert torch.allclose(ft.model.eval()(x), ref(x), atol=1e-5)
    kw = dict(init=str(exported), model={"refine": 8}, lr=1e-2, augment_p=0.0)
    tp.train_perception(_opts("mask_ae", cache, tmp_path / "r", steps=25, **kw), quiet=True)
    losses = _losses(tmp_path / "r")
    assert np.mean(losses[-5:]) < np.mean(losses[:3])
    out = load_module_file(tmp_path / "r" / "mask_ae.safetensors", "mask_ae")
    assert out.config.refine == 8 and out.config.widths() == ref.config.widths()
    assert any(k.startswith("refine.") for k in out.state_dict())
    assert not torch.equal(out.state_dict()["refine.1.weight"], torch.zeros_like(out.state_dict()["refine.1.weight"]))
    assert json.loads((tmp_path / "r" / "options.json").read_text())["augment_p"] == 0.0
    with pytest.raises(UserError, match="augment-p"):
        tp.train_perception(_opts("mask_ae", cache, tmp_path / "bad", steps=1, augment_p=1.5), quiet=True)
    # with --init, encoder fields stay refused
    with pytest.raises(UserError, match="max_width"):
        tp.train_perception(_opts("mask_ae", cache, tmp_path / "bad2", steps=1, init=str(exported),
                                  model={"refine": 8, "max_width": 8}), quiet=True)


def test_second_refinement_stage_stacks_behind_a_frozen_encoder(cache, tmp_path):
    """``refine2`` adds a deeper full-resolution stage on top of a trained AE that already has
    ``refine``: the output is unchanged before training, the code (encoder) stays bit-identical
    with --freeze-encoder, and the new stage trains (its last conv leaves zero)."""
    tp.train_perception(_opts("mask_ae", cache, tmp_path / "src", steps=4, model={"refine": 8}), quiet=True)
    exported = tmp_path / "src" / "mask_ae.safetensors"
    ref = load_module_file(exported, "mask_ae").eval()
    kw = dict(init=str(exported), model={"refine2": 8, "refine2_layers": 3}, freeze_encoder=True, lr=1e-2,
              augment_p=0.0)
    ft = tp.PerceptionTrainer(_opts("mask_ae", cache, tmp_path / "ft", steps=1, **kw))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in ft.model.refine2.modules()) == 4  # 3 hidden + output
    masks = torch.from_numpy(np.load(cache / "masks.npy")[:4].astype(np.int64))
    x = F.one_hot(masks, 19).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        assert torch.allclose(ft.model.eval()(x), ref(x), atol=1e-5)
    tp.train_perception(_opts("mask_ae", cache, tmp_path / "r", steps=20, **kw), quiet=True)
    out = load_module_file(tmp_path / "r" / "mask_ae.safetensors", "mask_ae").eval()
    assert out.config.refine == 8 and out.config.refine2 == 8 and out.config.refine2_layers == 3
    assert not torch.equal(out.refine2[-1].weight, torch.zeros_like(out.refine2[-1].weight))
    with torch.no_grad():
        assert torch.allclose(out.encode(x), ref.encode(x), atol=1e-2)  # fp16 storage of the same tensors
        assert not torch.allclose(out(x), ref(x), atol=1e-3)


def test_minutes_budget_stops(cache, tmp_path):
    tr = tp.train_perception(_opts("coeff_ae", cache, tmp_path / "m", minutes=0.002), quiet=True)
    assert tr.step >= 1 and tr.elapsed >= 0.12


def test_options_validation(cache, tmp_path):
    with pytest.raises(UserError, match="budget"):
        tp.train_perception(_opts("parser", cache, tmp_path / "x"), quiet=True)
    with pytest.raises(UserError, match="does not exist"):
        tp.train_perception(_opts("parser", tmp_path / "nope", tmp_path / "y", steps=1), quiet=True)


def test_flatten_optimizer_roundtrip():
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    m(torch.ones(4, 3)).sum().backward()
    opt.step()
    t, meta = st.flatten_optimizer(opt, "opt")
    opt2 = torch.optim.Adam(m.parameters(), lr=0.5)
    st.unflatten_optimizer(opt2, "opt", t, json.loads(json.dumps(meta)))
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 0.1
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(s1["state"][i][k], s2["state"][i][k])


# --------------------------------------------------------------------------- loader and eval


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    for kind in ("parser", "analyzer", "mask_ae", "sketch_ae", "coeff_ae"):
        save_module(_tiny(kind, SIZE), d / f"{kind}.safetensors")
    return d


def test_loader_and_errors(weights, tmp_path):
    p = load_perception(weights)
    assert set(p.modules()) == {"parser", "analyzer", "mask_ae", "sketch_ae", "coeff_ae"}
    assert not p.parser.training
    with pytest.raises(UserError, match="does not exist"):
        load_perception(tmp_path / "missing")
    with pytest.raises(UserError, match="no analyzer weights"):
        load_module(tmp_path, "analyzer")
    bad = tmp_path / "bad"
    bad.mkdir()
    save_module(_tiny("mask_ae"), bad / "parser.safetensors")  # wrong kind under the parser's name
    with pytest.raises(UserError, match="expected 'parser'"):
        load_module(bad, "parser")
    (bad / "analyzer.safetensors").write_bytes(b"\x00" * 4)
    (bad / "analyzer.json").write_text("{}")
    with pytest.raises(UserError):
        load_module(bad, "analyzer")


def test_evaluate_perception_report(weights, cache):
    from mm2latent.world.cache import CachedWorldDataset

    mods = load_perception(weights).modules()
    rep = ev.evaluate_perception(mods, CachedWorldDataset(cache), limit=16, real_photos=REAL)
    assert rep["num_samples"] == 16
    assert len(rep["parser"]["per_class_iou"]) == NUM_CLASSES
    assert 0 <= rep["parser"]["miou"] <= 1
    assert len(rep["analyzer"]["attributes"]["balanced_accuracy"]) == 37
    assert set(rep["analyzer"]["coeffs"]["mae"]) >= {"yaw", "pitch", "roll"}
    assert set(rep["mask_ae"]["perturbed_miou"]) == {"affine", "blobby", "affine+blobby"}
    assert 0 <= rep["sketch_ae"]["fscore"] <= 1
    if (REAL / "photos").is_dir():
        assert len(rep["parser"]["real_photos"]["per_photo_miou"]) == 4
    json.dumps(ev.jsonable(rep), allow_nan=False)


@pytest.mark.skipif(not REAL.is_dir(), reason=REAL_SKIP_REASON)
def test_real_masks_load_and_encode():
    from mm2latent.common.palette import load_mask

    mae = _tiny("mask_ae", 32).eval()
    files = sorted((REAL / "masks-index").glob("*.png")) + sorted((REAL / "masks-color").glob("*.png"))
    assert files
    masks = torch.stack([torch.from_numpy(load_mask(f, size=32).astype(np.int64)) for f in files])
    z = mae.encode(masks)
    assert z.shape == (len(files), TINY_MODEL["mask_ae"]["latent_dim"]) and torch.isfinite(z).all()


# --------------------------------------------------------------------------- CLI


def _cli(argv, capsys):
    from mm2latent.cli import main as cli_main

    rc = cli_main.main(argv)
    return rc, capsys.readouterr()


def test_cli_parse_attributes_coeffs(weights, tmp_path, capsys):
    from PIL import Image

    from mm2latent.common.palette import load_mask

    img = tmp_path / "face.png"
    Image.fromarray((np.random.default_rng(0).random((80, 96, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "m.png"
    rc, cap = _cli(["parse", str(img), "--out", str(out), "--weights", str(weights)], capsys)
    assert rc == 0, cap.err
    m = load_mask(out)
    assert m.shape == (80, 80) and m.max() < NUM_CLASSES
    rc, cap = _cli(["parse", str(img), "--out", str(tmp_path / "c.png"), "--color", "--size", "64", "--weights", str(weights)], capsys)
    assert rc == 0 and load_mask(tmp_path / "c.png").shape == (64, 64)
    rc, cap = _cli(["attributes", str(img), "--weights", str(weights)], capsys)
    probs = json.loads(cap.out)
    assert rc == 0 and len(probs) == 37 and "Smiling" in probs and all(0 <= v <= 1 for v in probs.values())
    rc, cap = _cli(["coeffs", str(img), "--weights", str(weights)], capsys)
    co = json.loads(cap.out)
    assert rc == 0 and list(co)[:3] == ["yaw", "pitch", "roll"] and -30 <= co["yaw"] <= 30


def test_cli_errors_are_one_line(weights, tmp_path, capsys):
    rc, cap = _cli(["parse", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o.png"), "--weights", str(weights)], capsys)
    assert rc == 2 and "image not found" in cap.err and cap.err.count("\n") == 1
    img = tmp_path / "f.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 90, 80)).save(img)
    rc, cap = _cli(["attributes", str(img), "--weights", str(tmp_path / "nowhere")], capsys)
    assert rc == 2 and "does not exist" in cap.err and cap.err.count("\n") == 1
    rc, cap = _cli(["coeffs", str(img), "--weights", str(tmp_path)], capsys)
    assert rc == 2 and "no analyzer weights" in cap.err and cap.err.count("\n") == 1


def test_cli_train_and_eval(cache, weights, tmp_path, capsys):
    run = tmp_path / "run"
    exp = tmp_path / "w" / "coeff_ae.safetensors"
    (tmp_path / "w").mkdir()
    argv = ["train", "coeff-ae", "--data", str(cache), "--out", str(run), "--steps", "3", "--batch", "16",
            "--export", str(exp), "--model", json.dumps(TINY_MODEL["coeff_ae"])]
    rc, cap = _cli(argv, capsys)
    assert rc == 0, cap.err
    assert exp.exists() and list((run / "checkpoints").glob("*.safetensors"))
    rc, cap = _cli(argv[:-4] + ["--steps", "5", "--resume"], capsys)
    assert rc == 0 and "resumed" in cap.out
    rc, cap = _cli(["train", "parser", "--data", str(cache), "--out", str(tmp_path / "r2")], capsys)
    assert rc == 2 and "budget" in cap.err
    rep = tmp_path / "report.json"
    rc, cap = _cli(["eval", "perception", "--weights", str(weights), "--data", str(cache), "--out", str(rep),
                    "--limit", "8", "--models", "mask_ae,coeff_ae"], capsys)
    assert rc == 0, cap.err
    r = json.loads(rep.read_text())
    assert "mask_ae" in r and "coeff_ae" in r and "parser" not in r


def test_sketch_from_image_polarity_and_resize():
    from mm2latent.models.registry import sketch_from_image

    a = np.full((64, 80), 255, np.uint8)
    a[30:32, 16:64] = 0  # a black 2-px line on white
    s1 = sketch_from_image(a, 32)
    s2 = sketch_from_image(np.repeat((255 - a)[..., None], 3, 2), 32)  # white on black, RGB
    assert s1.shape == (1, 32, 32) and torch.equal(s1, s2)
    assert s1[0, 15].sum() >= 20 and s1.mean() < 0.1


def test_legacy_configs_keep_their_architecture():
    from mm2latent.models.autoencoders import SpatialAEConfig

    # files written before ``full_res``/``latent`` existed load as what they were built as
    assert ParserConfig.from_dict({"base": 4, "depth": 2}, legacy=True).full_res is True
    assert ParserConfig.from_dict({"full_res": False}, legacy=True).full_res is False
    # new models (overrides only) take the current defaults
    assert ParserConfig().full_res is False and ParserConfig.from_dict({"base": 4}).full_res is False
    legacy = MaskAEConfig.from_dict({"size": 32, "base": 4, "max_width": 8, "latent_dim": 16, "bottom": 4}, legacy=True)
    assert legacy.full_res is True and legacy.latent == "dense"
    assert SpatialAEConfig().latent == "spatial" and SpatialAEConfig().full_res is False
    # a shipped file whose JSON predates ``full_res`` loads as the full-resolution net it is
    from mm2latent.models.registry import build_model, load_module_file, save_module

    old = build_model("parser", {"base": 4, "depth": 2, "max_width": 8, "full_res": True, "size": 16})
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_module(old, Path(d) / "parser.safetensors", half=False)
        js = Path(d) / "parser.json"
        cfg = json.loads(js.read_text())
        del cfg["config"]["full_res"]
        js.write_text(json.dumps(cfg))
        m = load_module_file(Path(d) / "parser.safetensors", "parser")
    assert m.config.full_res is True
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(m(x), old.eval()(x))
    with pytest.raises(UserError, match="unknown"):
        ParserConfig.from_dict({"nope": 1})


def test_analyzer_part_statistics_option():
    from mm2latent.models.analyzer import part_statistics

    m = FaceAnalyzer(AnalyzerConfig(stem=4, widths=(8, 8), hidden=16, size=32, aux_res=2, part_stats=True))
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    a, c, seg = m.forward_train(x)
    assert a.shape == (2, 37) and seg.shape == (2, NUM_CLASSES, 16, 16)
    a.sum().backward()
    assert x.grad.abs().sum() > 0
    # a class filling the left half: area 1/2, centroid x < 0, y = 0
    logits = torch.full((1, 3, 4, 4), -20.0)
    logits[0, 1, :, :2] = 20.0
    logits[0, 0, :, 2:] = 20.0
    st = part_statistics(logits)
    assert st.shape == (1, 15)
    assert st[0, 1].exp().item() == pytest.approx(0.5 + 1e-4, rel=1e-3)
    assert st[0, 3 + 1].item() < 0 and abs(st[0, 6 + 1].item()) < 1e-5


# --------------------------------------------------------------------------- output-bias calibration


@pytest.mark.parametrize("extra", [{}, {"refine": 4}, {"refine": 4, "refine2": 4}, {"heads": 1}])
def test_shift_output_logits_adds_a_constant_per_class(extra):
    """The per-class offset lands on the final logits exactly, whichever layer writes them last
    (plain heads, the pixel-shuffle head alone, refine, refine2), and the code is unchanged."""
    torch.manual_seed(0)
    m = MaskAE(MaskAEConfig(size=32, base=4, max_width=8, latent_dim=64, bottom=4, **extra)).eval()
    for mod in m.modules():  # zero-init output convs would hide a wrong fold
        if isinstance(mod, torch.nn.Conv2d) and mod.bias is not None:
            torch.nn.init.normal_(mod.bias, std=0.1)
    x = F.one_hot(torch.randint(0, NUM_CLASSES, (2, 32, 32)), NUM_CLASSES).permute(0, 3, 1, 2).float()
    b = torch.linspace(-1.5, 1.5, NUM_CLASSES)
    with torch.no_grad():
        before, code = m(x), m.encode(x)
        m.shift_output_logits(b)
        assert torch.allclose(m(x), before + b.view(1, -1, 1, 1), atol=1e-5)
        assert torch.equal(m.encode(x), code)
    with pytest.raises(ValueError, match="offsets"):
        m.shift_output_logits([0.0] * 3)


def test_fit_output_bias_removes_a_systematic_over_draw():
    """Logits that favour class 2 by a constant 1.2 (an over-drawn small part) get an offset that
    cancels it: mIoU rises to (nearly) perfect and class 2's offset is about -1.2 relative to the rest."""
    from mm2latent.train.calibration import fit_output_bias

    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 4, (6, 16, 16), generator=g)
    logits = 2.0 * F.one_hot(truth, 4).permute(0, 3, 1, 2).float() + 0.6 * torch.randn(6, 4, 16, 16, generator=g)
    logits[:, 2] += 1.2
    fit = fit_output_bias(logits.half(), truth.numpy(), limit=2.0, step=0.1, rounds=4)
    assert fit.miou_after > fit.miou_before + 0.05 and fit.miou_after > 0.9
    rel = fit.bias[2] - np.mean([fit.bias[k] for k in (0, 1, 3)])
    assert -1.6 < rel < -0.8, fit.bias
    assert fit.history[-1]["miou"] == pytest.approx(fit.miou_after)


def test_calibrate_mask_ae_cli_writes_new_weights_and_keeps_the_encoder(cache, tmp_path):
    from mm2latent.cli.main import main
    from mm2latent.common.checkpoint import load_checkpoint

    tp.train_perception(_opts("mask_ae", cache, tmp_path / "src", steps=4, model={**TINY_MODEL["mask_ae"],
                                                                                  "refine": 4}), quiet=True)
    src = tmp_path / "src" / "mask_ae.safetensors"
    raw = src.read_bytes()
    out = tmp_path / "cal.safetensors"
    assert main(["calibrate-mask-ae", str(src), "--data", str(cache), "--num", "16", "--out", str(out),
                 "--val", str(cache), "--val-limit", "8"]) == 0
    assert src.read_bytes() == raw
    a, b = load_module_file(src, "mask_ae"), load_module_file(out, "mask_ae")
    enc = [k for k in a.state_dict() if k.startswith(("enc.", "to_code."))]
    assert enc and all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in enc)
    _, cfg = load_checkpoint(out, expect_kind="mask_ae")
    rec = cfg["trained"]["output_calibration"]
    assert len(rec["bias"]) == NUM_CLASSES and rec["num"] == 16
    assert rec["train_miou_after"] >= rec["train_miou_before"] and rec["val_miou_after"] == round(cfg["val"]["miou"], 4)
    # refused: overwriting the input, a non-safetensors output, a file of another kind
    assert main(["calibrate-mask-ae", str(src), "--data", str(cache), "--out", str(src)]) != 0
    assert main(["calibrate-mask-ae", str(src), "--data", str(cache), "--out", str(tmp_path / "x.pt")]) != 0
    tp.train_perception(_opts("sketch_ae", cache, tmp_path / "sk", steps=1), quiet=True)
    assert main(["calibrate-mask-ae", str(tmp_path / "sk" / "sketch_ae.safetensors"), "--data", str(cache),
                 "--out", str(tmp_path / "y.safetensors")]) != 0
    assert not (tmp_path / "y.safetensors").exists()


def test_class_weight_power_option(cache, tmp_path):
    """--class-weight-power sets the cross-entropy weights (0: plain, all ones) and is validated."""
    tr = tp.PerceptionTrainer(_opts("mask_ae", cache, tmp_path / "a", steps=1, class_weight_power=0.0))
    assert np.allclose(tr.task.weights, 1.0)
    tr = tp.PerceptionTrainer(_opts("mask_ae", cache, tmp_path / "b", steps=1))
    assert tr.task.weights.max() > 2.0
    with pytest.raises(UserError, match="class-weight-power"):
        tp.train_perception(_opts("mask_ae", cache, tmp_path / "c", steps=1, class_weight_power=2.0), quiet=True)


def test_mask_ae_error_bench_locates_boundary_errors_and_over_draw():
    """bench/studies/mask_ae_errors.py: a 'reconstruction' that grows class 2 by one pixel has every error
    within 1 px of a boundary, only false positives for class 2 and only misses for class 1."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mask_ae_errors", Path(__file__).resolve().parents[1] / "bench" /
                                                  "studies" / "mask_ae_errors.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    truth = torch.ones(2, 16, 16, dtype=torch.long)
    truth[:, 5:9, 5:9] = 2

    def grown(x):  # one-hot in -> logits of the mask with class 2 dilated by 1 px
        two = F.max_pool2d(x[:, 2:3], 3, 1, 1)
        return torch.cat([x[:, :1], x[:, 1:2] * (1 - two), two, x[:, 3:]], 1)

    r = bench.error_structure(grown, truth)
    assert r["errors_within_1px_of_boundary"] == 1.0 and r["wrong_pixel_share"] > 0
    skin, nose = r["per_class"]["skin"], r["per_class"]["nose"]
    assert nose["false_neg"] == 0 and nose["false_pos"] == 2 * (36 - 16) and skin["false_pos"] == 0


def test_lovasz_softmax_loss_tracks_iou_and_trains(cache, tmp_path):
    """The Lovász-softmax term is ~0 for a confident perfect prediction, grows as IoU falls, has
    gradients, and --lovasz-weight adds it to the mask-AE loss (logged); negative weights are refused."""
    truth = torch.randint(0, 4, (2, 12, 12), generator=torch.Generator().manual_seed(1))
    perfect = 20.0 * F.one_hot(truth, 4).permute(0, 3, 1, 2).float()
    shifted = torch.roll(perfect, 3, dims=-1)
    losses = [tp.lovasz_softmax_loss(x, truth, 4).item() for x in (perfect, shifted, -perfect)]
    assert losses[0] < 1e-6 < losses[1] < losses[2] <= 1.0 + 1e-6
    x = torch.zeros(2, 4, 12, 12, requires_grad=True)
    tp.lovasz_softmax_loss(x, truth, 4).backward()
    assert x.grad.abs().sum() > 0
    tp.train_perception(_opts("mask_ae", cache, tmp_path / "l", steps=3, lovasz_weight=0.5), quiet=True)
    logged = [json.loads(line) for line in (tmp_path / "l" / "log.jsonl").read_text().splitlines()]
    assert any("lovasz" in r for r in logged)
    with pytest.raises(UserError, match="lovasz"):
        tp.train_perception(_opts("mask_ae", cache, tmp_path / "bad", steps=1, lovasz_weight=-1.0), quiet=True)
