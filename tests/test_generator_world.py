"""The world generator recipe: world codes, the recipe file, the three stages, exact resume, figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mm2latent.common.errors import UserError
from mm2latent.eval.generator_world import (check_targets, evaluate_world_generator, laplacian_variance,
                                            sharpness_ratios)
from mm2latent.eval.generator import blur
from mm2latent.models.stylegan2 import load_generator
from mm2latent.train.generator_world import (GeneratorRecipe, RunOptions, WorldGeneratorTrainer, load_recipe,
                                             train_world_generator)
from mm2latent.world.cache import build_cache
from mm2latent.world.code import ATTR_SLICE, CODE_DIM, COEFF_SLICE, resample_keeping_attributes, world_code, world_codes
from mm2latent.world.params import sample_params
from mm2latent.world.render import render

ROOT = Path(__file__).resolve().parents[1]

TINY = """
data = "{data}"
[model]
resolution = 64
channels = [32, 32, 16, 16, 8]
d_channels = [16, 16, 8, 8, 8]
w_dim = 32
mapping_layers = 2
[schedule]
batch = 4
supervised_kimg = 0.016
adversarial_kimg = 0.032
encoder_kimg = 0.016
[encoder]
encoder_widths = [8, 16, 16, 16]
"""


@pytest.fixture(scope="module")
def cache64(tmp_path_factory):
    return build_cache(tmp_path_factory.mktemp("gw") / "c64", num=24, size=64, workers=1)


@pytest.fixture()
def tiny_recipe(tmp_path, cache64):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY.format(data=cache64))
    return p


def test_world_code_is_unit_scale_and_determined_by_the_parameters():
    p = sample_params(0, 3)
    c = world_code(p)
    assert c.shape == (CODE_DIM,) and c.dtype == np.float32
    assert np.allclose(c, world_codes(0, [3])[0])
    assert set(np.unique(c[ATTR_SLICE])) <= {-1.0, 1.0}
    assert np.abs(c[COEFF_SLICE]).max() <= 1.0
    codes = world_codes(0, range(200))
    rms = np.sqrt((codes ** 2).mean(1))
    assert 0.7 < rms.min() and rms.max() < 1.4  # pixel norm leaves codes nearly as they are
    q = resample_keeping_attributes(p, seed=5)
    assert q.attrs == p.attrs and not np.allclose(q.u, p.u)
    assert not np.array_equal(render(q, 64).image, render(p, 64).image)


def test_shipped_recipe_loads_and_bad_recipes_give_one_line(tmp_path):
    r = load_recipe(ROOT / "configs" / "generator_world.toml")
    assert r.resolution == 128 and r.total_steps > 0
    bad = tmp_path / "bad.toml"
    bad.write_text("batchsize = 3\n")
    with pytest.raises(UserError, match="unknown keys"):
        load_recipe(bad)
    bad.write_text("batch = [\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "missing.toml")
    bad.write_text("channels = [1, 2]\n")
    with pytest.raises(UserError, match="channels needs 6 widths"):
        load_recipe(bad)


def test_recipe_runs_every_stage_and_exports_at_the_end_only(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe)
    run = tmp_path / "run"
    t = train_world_generator(recipe, RunOptions(out=str(run), steps=5, sample_every=0))
    assert t.stage == "adversarial" and not (run / "export").exists()
    t = train_world_generator(recipe, RunOptions(out=str(run), sample_every=0))
    assert t.stage == "done" and t.step == recipe.total_steps
    G = load_generator(run / "export" / "generator.safetensors")
    assert G.z_dim == CODE_DIM
    meta = json.loads((run / "export" / "generator.json").read_text())
    assert meta["training"]["conditioning"] == "world_code"
    enc = json.loads((run / "export" / "image_encoder.json").read_text())
    assert enc["config"]["z_dim"] == CODE_DIM and enc["predicts"] == "world_code"
    assert list((run / "checkpoints").glob("ckpt-*.safetensors"))


def test_resume_is_exact_and_cleans_torn_writes(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe)
    straight = train_world_generator(recipe, RunOptions(out=str(tmp_path / "a"), steps=12, sample_every=0))
    train_world_generator(recipe, RunOptions(out=str(tmp_path / "b"), steps=7, sample_every=0))
    torn = tmp_path / "b" / "checkpoints" / ".ckpt-000000099.safetensors.abc.tmp"
    torn.write_bytes(b"half")
    resumed = train_world_generator(recipe, RunOptions(out=str(tmp_path / "b"), steps=12, sample_every=0))
    assert not torn.exists()
    for name in ("G", "D", "G_ema", "E"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_a_run_of_another_recipe_is_refused(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe)
    train_world_generator(recipe, RunOptions(out=str(tmp_path / "r"), steps=2, sample_every=0))
    other = GeneratorRecipe(**{**recipe.to_dict(), "lr": 0.01})
    with pytest.raises(UserError, match="another recipe"):
        train_world_generator(other, RunOptions(out=str(tmp_path / "r"), steps=3, sample_every=0))
    longer = GeneratorRecipe(**{**recipe.to_dict(), "adversarial_kimg": 0.064})  # lengthening a stage is fine
    t = train_world_generator(longer, RunOptions(out=str(tmp_path / "r"), steps=3, sample_every=0))
    assert t.step == 3


def test_supervised_stage_learns_the_renders(cache64, tmp_path):
    recipe = GeneratorRecipe(data=str(cache64), resolution=64, channels=[32, 32, 32, 16, 16],
                             d_channels=[8] * 5, w_dim=32, mapping_layers=2, batch=8, supervised_kimg=0.8,
                             adversarial_kimg=0, encoder_kimg=0, lr=0.004, encoder_widths=[8, 16, 16, 16])
    t = WorldGeneratorTrainer(recipe, RunOptions(out=str(tmp_path)))
    first = t.train_step()["l1"]
    for _ in range(80):
        last = t.train_step()["l1"]
    assert last < 0.6 * first


def test_sharpness_figures_see_blur_and_targets_are_checked():
    imgs = torch.stack([torch.from_numpy(render(sample_params(0, i), 64).image).permute(2, 0, 1).float() / 127.5 - 1
                        for i in range(4)])
    masks = np.stack([render(sample_params(0, i), 64).mask for i in range(4)])
    assert (laplacian_variance(blur(imgs, 1.0)) < 0.5 * laplacian_variance(imgs)).all()
    same = sharpness_ratios(imgs, imgs, masks)
    assert same["sharpness_ratio"] == pytest.approx(1.0) and same["eye_sharpness_ratio"] == pytest.approx(1.0)
    soft = sharpness_ratios(blur(imgs, 1.0), imgs, masks)
    assert soft["sharpness_ratio"] < 0.5 and soft["eye_sharpness_ratio"] < 0.5
    met = check_targets({"sharpness_ratio": 0.7, "eye_sharpness_ratio": 2.5, "seed_spread": 0.4})
    assert met["sharpness_ratio"] and not met["eye_sharpness_ratio"] and not met["seed_spread"]
    assert not met["frechet_ratio"]  # missing figures are not met


def test_evaluation_runs_on_a_tiny_generator(tiny_recipe, tmp_path):
    t = train_world_generator(load_recipe(tiny_recipe), RunOptions(out=str(tmp_path / "r"), steps=2, sample_every=0))
    out = evaluate_world_generator(t.G_ema, num=6, sharp_num=6, spread_sets=3)
    for k in ("sharpness_ratio", "eye_sharpness_ratio", "seed_spread"):
        assert np.isfinite(out[k])
    assert set(out["targets_met"]) >= {"sharpness_ratio", "seed_spread"}


def test_checkpoint_carry_round_trip(tiny_recipe, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("carry", ROOT / "tools" / "carry_checkpoint.py")
    carry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(carry)
    from mm2latent.train.generator_world import TRAIN_KIND

    recipe = load_recipe(tiny_recipe)
    straight = train_world_generator(recipe, RunOptions(out=str(tmp_path / "a"), steps=8, sample_every=0))
    train_world_generator(recipe, RunOptions(out=str(tmp_path / "b"), steps=4, sample_every=0))
    monkeypatch.setattr(carry, "PART_BYTES", 100_000)  # several parts even for a tiny model
    carry.pack(tmp_path / "b", tmp_path / "carried", TRAIN_KIND)
    assert len(list((tmp_path / "carried").glob("part-*"))) > 1
    carry.unpack(tmp_path / "carried", tmp_path / "c", TRAIN_KIND)  # another machine's run directory
    moved = train_world_generator(recipe, RunOptions(out=str(tmp_path / "c"), steps=8, sample_every=0))
    for k, v in straight.G.state_dict().items():
        assert torch.equal(v, moved.G.state_dict()[k]), k
    (tmp_path / "carried" / "part-00").write_bytes(b"damaged")
    with pytest.raises(SystemExit):
        carry.unpack(tmp_path / "carried", tmp_path / "d", TRAIN_KIND)


def test_cli_stops_with_a_resume_hint_and_refuses_bad_recipes(tiny_recipe, tmp_path, capsys):
    from mm2latent.cli.main import main

    assert main(["train", "generator", "--recipe", str(tmp_path / "none.toml"), "--out", str(tmp_path / "r")]) == 2
    assert "recipe not found" in capsys.readouterr().err
    assert main(["train", "generator", "--recipe", str(tiny_recipe), "--out", str(tmp_path / "r"),
                 "--steps", "3", "--sample-every", "0"]) == 0
    assert "run the same command to continue" in capsys.readouterr().out
    assert main(["train", "generator", "--recipe", str(tiny_recipe), "--out", str(tmp_path / "r"),
                 "--steps", "4", "--amp", "bf16", "--sample-every", "0"]) == 0  # resumes, CPU autocast
    assert "stopped at step 4" in capsys.readouterr().out



def test_supervised_adam_beta_and_mapping_rate_come_from_the_recipe(tiny_recipe, tmp_path):
    import dataclasses

    recipe = dataclasses.replace(load_recipe(tiny_recipe), lr_mlp=1.0, g_beta1_supervised=0.9)
    t = WorldGeneratorTrainer(recipe, RunOptions(out=str(tmp_path / "x")))
    t.train_step()
    assert t.optG.param_groups[0]["betas"][0] == 0.9 and t.G.cfg.lr_mlp == 1.0
    run = tmp_path / "run"
    t = train_world_generator(recipe, RunOptions(out=str(run), sample_every=0))
    assert t.optG.param_groups[0]["betas"][0] == 0.0  # StyleGAN2's beta1 once adversarial
    G = load_generator(run / "export" / "generator.safetensors")
    assert G.cfg.lr_mlp == 1.0  # the mapping's weight gains travel with the weights
    code = torch.from_numpy(world_codes(0, range(2)))
    with torch.no_grad():
        assert torch.allclose(G(code, noise_mode="const"), t.G_ema(code, noise_mode="const"), atol=1e-6)


def test_a_stage_that_has_not_started_may_change_its_own_keys(tiny_recipe, tmp_path):
    import dataclasses

    recipe = load_recipe(tiny_recipe)
    train_world_generator(recipe, RunOptions(out=str(tmp_path / "r"), steps=2, sample_every=0))  # supervised
    later = dataclasses.replace(recipe, adv_weight=0.3, encoder_lr=0.002)
    t = train_world_generator(later, RunOptions(out=str(tmp_path / "r"), steps=6, sample_every=0))
    assert t.stage == "adversarial"
    with pytest.raises(UserError, match="differs in adv_weight"):  # the adversarial stage has run now
        train_world_generator(recipe, RunOptions(out=str(tmp_path / "r"), steps=7, sample_every=0))
