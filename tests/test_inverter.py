"""The e4e-style W+ inverter: model, trainer (exact resume, offset regulariser) and its use in the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mm2latent.common.errors import UserError
from mm2latent.models.inversion import ImageEncoder, ImageEncoderConfig, WPlusInverter, WPlusInverterConfig
from mm2latent.models.stylegan2 import Generator
from mm2latent.models.registry import build_model, load_module_file, save_module
from mm2latent.train import state as ckpt
from mm2latent.train.inverter import TRAIN_KIND, InverterOptions, InverterTrainer, train_inverter

SIZE = 64  # the world renders at 64 px and up


@pytest.fixture(scope="module")
def parts():
    from mm2latent.models.stylegan2 import StyleGAN2Config

    torch.manual_seed(0)
    cfg = StyleGAN2Config(resolution=SIZE, z_dim=16, w_dim=16, mapping_layers=2,
                          channels={4: 16, 8: 16, 16: 8, 32: 8, 64: 8})
    return Generator(cfg).eval(), ImageEncoder(ImageEncoderConfig(size=SIZE, z_dim=16, widths=[8, 8, 16, 16]))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from helpers import write_world_cache

    return write_world_cache(tmp_path_factory.mktemp("icache") / "c", 12, SIZE)


@pytest.fixture(scope="module")
def judges(tmp_path_factory) -> dict[str, str]:
    from helpers import TINY

    d = tmp_path_factory.mktemp("judges")
    torch.manual_seed(1)
    for kind in ("parser", "analyzer"):
        save_module(build_model(kind, dict(TINY[kind], size=SIZE)), d / f"{kind}.safetensors")
    return {"parser": str(d / "parser.safetensors"), "analyzer": str(d / "analyzer.safetensors")}


def _opts(cache, out, judges, **kw):
    base = dict(out=str(out), data=str(cache), batch=4, sample_batch=2, steps=4, sample_every=0,
                progressive_steps=1, **judges)
    base.update(kw)
    return InverterOptions(**base)


def test_fresh_inverter_is_the_w_encoder(parts):
    """Zero-initialised offsets: w+ is the generator-AE encoder's w on every layer."""
    G, E = parts
    inv = WPlusInverter.from_parts(E, G)
    x = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        ws, off = inv(x)
        want = G.mapping(E(x)[0])
    assert ws.shape == (3, G.num_ws, G.w_dim) and off.shape == ws.shape
    assert torch.allclose(ws, want[:, None, :].expand_as(ws), atol=1e-6) and off.abs().max() == 0
    # layer groups cover num_ws; the coarse group reads the deepest features
    c = inv.config
    assert sum(c.groups) == G.num_ws and c.feature_res[0] == 4
    with pytest.raises(UserError, match="sum to num_ws"):
        WPlusInverterConfig(encoder=E.config.to_dict(), num_ws=G.num_ws, groups=[1, 1, 1])
    with pytest.raises(UserError, match="no 64px features"):
        WPlusInverterConfig(encoder=E.config.to_dict(), num_ws=6, groups=[2, 2, 2], feature_res=[4, 8, 64])


def test_progressive_offsets_switch_on_coarse_first(parts, cache, judges, tmp_path):
    G, E = parts
    tr = InverterTrainer(_opts(cache, tmp_path, judges, progressive_steps=2), generator=G, image_encoder=E)
    assert tr.inv.active.sum() == 0
    for _ in range(5):
        tr.train_step()
    tr._set_active()
    assert tr.inv.active.tolist() == [1.0, 1.0] + [0.0] * (G.num_ws - 2)
    ws, off = tr.inv(torch.rand(2, 3, SIZE, SIZE))
    assert off[:, 2:].abs().max() == 0 and off[:, :2].abs().max() > 0


def test_training_lowers_reconstruction_error_and_regulariser_bounds_offsets(parts, cache, judges, tmp_path):
    G, E = parts
    x = None
    errs, sizes = {}, {}
    for reg in (0.0, 50.0):
        torch.manual_seed(0)
        tr = InverterTrainer(_opts(cache, tmp_path / str(reg), judges, progressive_steps=0, lr=3e-3, batch=12,
                                   offset_reg=reg), generator=G, image_encoder=E)
        x = tr.data.batch(list(range(12)))["image"]

        def err():
            with torch.no_grad():
                return (G.synthesis(tr.inv(x)[0], noise_mode="const") - x).abs().mean().item()

        before = err()
        for _ in range(25):
            tr.train_step()
        errs[reg], sizes[reg] = (before, err()), tr.inv(x)[1].square().mean().item()
    assert errs[0.0][1] < errs[0.0][0] - 0.005  # the offsets fit what one w could not
    assert sizes[50.0] < 0.5 * sizes[0.0]  # the w-centred regulariser keeps them small


def test_resume_is_exact_and_export_loads(parts, cache, judges, tmp_path):
    G, E = parts
    torch.manual_seed(0)
    a = train_inverter(_opts(cache, tmp_path / "a", judges, steps=6), generator=G, image_encoder=E)
    torch.manual_seed(0)
    train_inverter(_opts(cache, tmp_path / "b", judges, steps=3), generator=G, image_encoder=E)
    torch.manual_seed(99)
    b = train_inverter(_opts(cache, tmp_path / "b", judges, steps=6, resume=True), generator=G, image_encoder=E)
    for (k, p), q in zip(a.inv.state_dict().items(), b.inv.state_dict().values()):
        assert torch.equal(p, q), k
    stem = ckpt.list_checkpoints(tmp_path / "b")[0]
    assert ckpt.read_checkpoint(stem, TRAIN_KIND)[1]["step"] == 6
    shipped = load_module_file(tmp_path / "b" / "wplus_inverter.safetensors", "wplus_inverter")
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(shipped(x)[0], b.inv(x)[0], atol=2e-2)  # fp16 storage
    with pytest.raises(UserError, match="already holds"):
        train_inverter(_opts(cache, tmp_path / "b", judges, steps=8), generator=G, image_encoder=E)


def test_init_fine_tunes_an_exported_inverter(parts, cache, judges, tmp_path):
    """--init: a run starts from an exported inverter (same predictions before any step, every
    offset active), trains on from there; an inverter for another generator layout is refused."""
    G, E = parts
    torch.manual_seed(0)
    train_inverter(_opts(cache, tmp_path / "a", judges, steps=6), generator=G, image_encoder=E)
    f = tmp_path / "a" / "wplus_inverter.safetensors"
    tr = InverterTrainer(_opts(cache, tmp_path / "b", judges, init=str(f)), generator=G, image_encoder=E)
    ref = load_module_file(f, "wplus_inverter")
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ref(x)[0], tr.inv.eval()(x)[0])
    tr.inv.train()
    assert bool(tr.inv.active.all())
    before = [p.detach().clone() for p in tr.inv.heads.parameters()]
    tr.train_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.inv.heads.parameters()))
    from mm2latent.models.stylegan2 import StyleGAN2Config

    other = Generator(StyleGAN2Config(resolution=SIZE, z_dim=16, w_dim=8, mapping_layers=2,
                                      channels={4: 16, 8: 16, 16: 8, 32: 8, 64: 8})).eval()
    with pytest.raises(UserError, match="predicts"):
        InverterTrainer(_opts(cache, tmp_path / "c", judges, init=str(f)), generator=other, image_encoder=E)
    E2 = ImageEncoder(E.config)  # another generator-AE's encoder: --init-base weights takes it as the base
    torch.nn.init.normal_(next(E2.parameters()))
    tr2 = InverterTrainer(_opts(cache, tmp_path / "e", judges, init=str(f), init_base="weights"),
                          generator=G, image_encoder=E2)
    with torch.no_grad():
        assert torch.allclose(tr2.inv.base(x), G.mapping(E2.eval()(x)[0]), atol=1e-5)
        for a, b in zip(tr2.inv.heads.state_dict().values(), ref.heads.state_dict().values()):
            assert torch.equal(a, b)
    with pytest.raises(UserError, match="no such file"):
        InverterTrainer(_opts(cache, tmp_path / "d", judges, init=str(tmp_path / "none.safetensors")),
                        generator=G, image_encoder=E)


def test_options_validation(cache, judges, tmp_path):
    for kw, msg in (({"steps": None}, "budget"), ({"offset_reg": -1.0}, "offset-reg"),
                    ({"mix_prob": 2.0}, "mix-prob"), ({"batch": 0}, "batch")):
        with pytest.raises(UserError, match=msg):
            _opts(cache, tmp_path, judges, **kw).validate()


@pytest.fixture(scope="module")
def weights_with_inverter(tmp_path_factory):
    from helpers import build_tiny_weights

    d = build_tiny_weights(tmp_path_factory.mktemp("wplusw"))
    from mm2latent.models.stylegan2 import load_generator

    G = load_generator(d / "generator.safetensors")
    E = load_module_file(d / "image_encoder.safetensors", "image_encoder")
    torch.manual_seed(5)
    inv = WPlusInverter.from_parts(E, G)
    for h in inv.heads:  # non-zero offsets, so that the two inverters differ
        torch.nn.init.normal_(h.out.weight, std=0.02)
    save_module(inv, d / "wplus_inverter.safetensors")
    return d


def test_pipeline_uses_the_wplus_inverter(weights_with_inverter, tmp_path, capsys):
    from mm2latent.cli.main import main
    from mm2latent.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(weights_with_inverter)
    photo = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    a, w = pipe.invert(photo), pipe.invert(photo, inverter="w")
    assert a.method == "wplus" and w.method == "w"
    assert not torch.equal(a.ws[:, 0], a.ws[:, -1])  # per-layer codes
    assert torch.equal(w.ws[:, 0], w.ws[:, -1])  # one w for every layer
    assert pipe.invert(photo, refine_steps=2).method == "wplus+refined"
    assert np.asarray(pipe.edit(a, text="a smiling man")).shape == (pipe.resolution, pipe.resolution, 3)
    with pytest.raises(UserError, match="inverter must be"):
        pipe.invert(photo, inverter="pti")
    from mm2latent.eval.figures import editing_sheet

    r = pipe.resolution + 4  # tiles are padded by 2 px
    sheet = editing_sheet(pipe, [photo], [{"label": "text", "text": "a man"}])
    assert sheet.shape[1] == 4 * r  # photo, W inversion, W+ inversion, one edit
    out = tmp_path / "r.png"
    from PIL import Image

    Image.fromarray(photo).save(tmp_path / "p.png")
    assert main(["invert", str(tmp_path / "p.png"), "--out", str(out), "--weights", str(weights_with_inverter),
                 "--inverter", "w"]) == 0
    assert "w inversion" in capsys.readouterr().out
    # weights without the W+ inverter: auto falls back to w; asking for wplus is a clear error
    (weights_with_inverter / "wplus_inverter.safetensors").rename(tmp_path / "moved.safetensors")
    try:
        plain = Pipeline.from_pretrained(weights_with_inverter)
        assert plain.invert(photo).method == "w"
        with pytest.raises(UserError, match="no W\\+ inverter"):
            plain.invert(photo, inverter="wplus")
    finally:
        (tmp_path / "moved.safetensors").rename(weights_with_inverter / "wplus_inverter.safetensors")


def test_batched_one_pass_codes_match_per_photo_inversion(weights_with_inverter):
    from mm2latent.pipeline import Pipeline
    from mm2latent.pipeline.editing import align_photo

    pipe = Pipeline.from_pretrained(weights_with_inverter)
    rng = np.random.default_rng(3)
    photos = [rng.integers(0, 255, (pipe.resolution, pipe.resolution, 3), dtype=np.uint8) for _ in range(3)]
    x = torch.cat([align_photo(p, pipe.resolution)[0] for p in photos])
    for inverter in ("wplus", "w"):
        codes, method = pipe.one_pass_codes(x, inverter)
        assert method == inverter and codes.shape[0] == 3
        for i, p in enumerate(photos):
            assert torch.allclose(codes[i:i + 1], pipe.invert(p, inverter=inverter).ws, atol=1e-5)
    # the attribute judge alone agrees with the full control read-out
    assert torch.equal(pipe.controls.attribute_probs(x), pipe.controls.derive(x)["attributes"])


def test_budget_bench_optimised_ceilings_fit_better_than_one_pass(weights_with_inverter):
    """bench/studies/text_fidelity_budget.py: optimising the one-pass code lowers the reconstruction loss,
    in W (one w shared by every layer) and in W+."""
    import importlib.util

    from mm2latent.models.inversion import reconstruction_loss
    from mm2latent.pipeline import Pipeline

    spec = importlib.util.spec_from_file_location("text_fidelity_budget", Path(__file__).resolve().parents[1] /
                                                  "bench" / "studies" / "text_fidelity_budget.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pipe = Pipeline.from_pretrained(weights_with_inverter)
    torch.manual_seed(0)
    x = torch.rand(3, 3, pipe.resolution, pipe.resolution) * 2 - 1
    for space in ("w", "wplus"):
        start = bench.optimised_reconstruct(pipe, x, 0, space, batch=2)
        tuned = bench.optimised_reconstruct(pipe, x, 15, space, lr=0.05, batch=2)
        assert start.shape == tuned.shape == x.shape
        assert reconstruction_loss(tuned, x) < reconstruction_loss(start, x)
    one_pass = bench.wplus_reconstruct(pipe, x, batch=2)
    assert torch.allclose(one_pass, bench.optimised_reconstruct(pipe, x, 0, "wplus"), atol=1e-5)


def test_pivotal_tuning_fits_the_photo_and_leaves_the_shared_generator_alone(weights_with_inverter, tmp_path,
                                                                           capsys):
    from mm2latent.cli.main import main
    from mm2latent.eval.editing import psnr
    from mm2latent.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(weights_with_inverter)
    before = {k: v.clone() for k, v in pipe.G.state_dict().items()}
    photo = np.random.default_rng(3).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    plain = pipe.invert(photo)
    tuned = pipe.invert(photo, tune_steps=30, tune_lr=3e-3)
    assert tuned.method == "wplus+tuned" and tuned.synthesis is not None
    assert torch.equal(tuned.ws, plain.ws)  # the pivot stays where the inverter put it
    assert tuned.history[-1] < tuned.history[0]
    assert psnr(tuned.reconstruction, tuned.image) > psnr(plain.reconstruction, plain.image) + 0.5
    assert all(torch.equal(v, before[k]) for k, v in pipe.G.state_dict().items())
    # edits of a tuned inversion are drawn with its tuned copy: strength 0 gives its reconstruction
    same = np.asarray(pipe.edit(tuned, text="a man", strength=0.0))
    from mm2latent.pipeline.core import to_pil

    assert np.array_equal(same, np.asarray(to_pil(tuned.reconstruction)[0]))
    with pytest.raises(UserError, match="tune steps"):
        pipe.invert(photo, tune_steps=-1)
    from PIL import Image

    Image.fromarray(photo).save(tmp_path / "p.png")
    assert main(["edit", str(tmp_path / "p.png"), "--text", "a man", "--tune", "3", "--weights",
                 str(weights_with_inverter), "--out", str(tmp_path / "e.png")]) == 0
    assert Image.open(tmp_path / "e.png").size == (pipe.resolution, pipe.resolution)


def test_mismatched_inverter_is_refused(weights_with_inverter, tmp_path):
    import shutil

    from mm2latent.pipeline import Pipeline

    d = tmp_path / "w"
    shutil.copytree(weights_with_inverter, d)
    E = ImageEncoder(ImageEncoderConfig(size=32, z_dim=16, widths=[8, 16, 16]))
    cfg = WPlusInverterConfig(encoder=E.config.to_dict(), w_dim=16, mapping_layers=2, num_ws=4, groups=[1, 1, 2])
    save_module(WPlusInverter(cfg), d / "wplus_inverter.safetensors")
    with pytest.raises(UserError, match="not made together"):
        Pipeline.from_pretrained(d)


def test_editing_eval_compares_w_and_wplus(weights_with_inverter):
    from mm2latent.eval.editing import evaluate_editing
    from mm2latent.pipeline import Pipeline

    rep = evaluate_editing(Pipeline.from_pretrained(weights_with_inverter), num=3, refine_steps=1, refine_num=2,
                           tune_steps=2)
    inv = rep["inversion"]
    assert inv["encoder"]["method"] == "wplus" and inv["w_encoder"]["method"] == "w"
    assert inv["encoder"]["psnr"] != inv["w_encoder"]["psnr"] and inv["wplus_offset_rms"] > 0
    assert {"delta", "blend", "delta_from_w_encoder"} <= set(rep["text_edits"])
    pt = rep["pivotal_tuning"]
    assert pt["num"] == 2 and pt["steps"] == 2 and pt["psnr"] > 0
    assert {"text_edits_tuned", "text_edits_shared_generator"} <= set(pt)


def test_refinement_feature_loss_pulls_embeddings_together(weights_with_inverter):
    """The refinement's feature term (world image encoder embedding) brings the reconstruction's
    embedding closer to the photo's than pixel losses alone do."""
    from mm2latent.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(weights_with_inverter)
    photo = np.random.default_rng(4).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    enc = pipe.controls.encoder
    cos = {}
    for fw in (0.0, 5.0):
        inv = pipe.invert(photo, refine_steps=40, lr=0.05, feature_weight=fw)
        with torch.no_grad():
            cos[fw] = float((enc.encode_image(inv.reconstruction) * enc.encode_image(inv.image)).sum())
    assert cos[5.0] > cos[0.0]
