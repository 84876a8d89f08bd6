"""World CLIP training (tiny config): learning, exact resume; encoder metrics on known cases."""

import math

import numpy as np
import pytest
import torch

from mm2latent.eval.encoder import balanced_accuracy, noise_std_for_cosine, recall_at_k
from mm2latent.train import state as st
from mm2latent.train.clip import CLIPTrainOptions, train_clip
from mm2latent.world.cache import CachedWorldDataset, build_cache

TINY = dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
            context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=1, transformer_layers=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return build_cache(tmp_path_factory.mktemp("c") / "cache", "val", num=48, size=64, workers=1)


def test_cache_matches_on_the_fly_samples(cache):
    from mm2latent.world import make_sample

    ds = CachedWorldDataset(cache)
    s = make_sample(ds.meta["seed"], 5, 64)
    assert np.array_equal(ds.images[5], s.image) and np.array_equal(ds.masks[5], s.mask)
    assert ds.captions[5] == [c.text for c in s.captions]
    b = ds.batch([7, 2])
    assert b["image"].shape == (2, 3, 64, 64) and b["index"].tolist() == [2, 7]


def _opts(cache, out, steps):
    return CLIPTrainOptions(data=str(cache), out=str(out), steps=steps, batch=16, lr=2e-3, warmup=2,
                            ckpt_every=3, config=TINY)


def test_clip_training_learns_and_resumes_exactly(cache, tmp_path):
    full = train_clip(_opts(cache, tmp_path / "full", 8))
    log = [l for l in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    # interrupted run: 4 steps (checkpoint at 3, final at 4), then resume to 8
    train_clip(_opts(cache, tmp_path / "part", 8), stop_at=4)
    resumed = train_clip(_opts(cache, tmp_path / "part", 8), resume=True)
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(Exception):
        train_clip(_opts(cache, tmp_path / "full", 8))  # non-empty run dir without --resume


def test_clip_loss_goes_down(cache, tmp_path):
    tr = train_clip(_opts(cache, tmp_path / "r", 40))
    import json

    rec = [json.loads(l) for l in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert rec[0]["step"] == 1 and rec[-1]["step"] == 40
    assert rec[-1]["loss"] < rec[0]["loss"] - 0.2


def test_damaged_checkpoint_falls_back(cache, tmp_path, capsys):
    train_clip(_opts(cache, tmp_path / "r", 6))
    stems = st.list_checkpoints(tmp_path / "r")
    assert len(stems) == 2
    raw = bytearray(stems[0].with_suffix(".safetensors").read_bytes())
    raw[-5] ^= 0xFF
    stems[0].with_suffix(".safetensors").write_bytes(bytes(raw))
    stem, _, meta = st.latest_good_checkpoint(tmp_path / "r", "clip-train")
    assert stem == stems[1] and "falling back" in capsys.readouterr().err


def test_retrieval_and_probe_metrics_known_cases():
    sim = torch.eye(4) + 0.01 * torch.arange(4.0)[None]
    assert recall_at_k(sim, 1) == 1.0
    sim[0, 0] = -1
    assert recall_at_k(sim, 1) == 0.75 and recall_at_k(sim, 4) == 1.0
    assert balanced_accuracy([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5 * (1 + 2 / 3))
    assert math.isnan(balanced_accuracy([1, 0], [1, 1]))
    # the noise level reproduces the cosine it was computed from
    d, c = 512, 0.6
    sd = noise_std_for_cosine(c, d)
    x = torch.nn.functional.normalize(torch.randn(2000, d), dim=1)
    y = torch.nn.functional.normalize(x + sd * torch.randn_like(x), dim=1)
    assert (x * y).sum(1).mean().item() == pytest.approx(c, abs=0.02)


def test_flipped_caption_states_one_flipped_fact():
    """Each hard negative is written by the world grammar and states the opposite of one fact of the
    image's own caption (or swaps its hair colour/texture for another one)."""
    from mm2latent.train.clip import flipped_caption
    from mm2latent.world.attributes import ATTRIBUTES, HAIR_COLOURS
    from mm2latent.world.captions import make_captions, stated_facts

    rng = np.random.default_rng(0)
    flipped_ok = 0
    for k in range(60):
        attrs = rng.random(len(ATTRIBUTES)) < 0.3
        attrs[[ATTRIBUTES.index(c) for c in HAIR_COLOURS]] = False
        attrs[ATTRIBUTES.index(HAIR_COLOURS[k % 4])] = True
        cap = make_captions({a: bool(v) for a, v in zip(ATTRIBUTES, attrs)}, rng, n=1)[0]
        facts = stated_facts(cap.text)
        neg = flipped_caption(attrs, facts, rng)
        assert isinstance(neg, str) and neg and neg != cap.text
        neg_facts = stated_facts(neg)
        truth = dict(zip(ATTRIBUTES, attrs.tolist()))
        contradicted = [a for a, v in neg_facts.items() if truth[a] != v]
        flipped_ok += bool(contradicted)
    assert flipped_ok >= 57  # nearly every negative contradicts the image somewhere


def test_hard_negative_training_learns_and_resumes_exactly(cache, tmp_path):
    def opts(out):
        o = _opts(cache, out, 6)
        o.hard_negatives = True
        return o

    full = train_clip(opts(tmp_path / "full"))
    train_clip(opts(tmp_path / "part"), stop_at=3)
    resumed = train_clip(opts(tmp_path / "part"), resume=True)
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    import json

    rec = [json.loads(l) for l in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert all("neg_acc" in r for r in rec)
    images, tokens = full.batch()
    assert tokens.shape[0] == 2 * images.shape[0]  # captions, then one hard negative each
    with pytest.raises(Exception):  # hard negatives on/off is a training option that must match on resume
        train_clip(_opts(cache, tmp_path / "part", 8), resume=True)


def test_clip_config_overrides(cache):
    from mm2latent.common.errors import UserError
    from mm2latent.train.clip import clip_config

    assert clip_config({"vision_patch_size": 8}).vision_patch_size == 8
    assert clip_config("world_small").vision_patch_size == 16
    with pytest.raises(UserError, match="unknown CLIP config"):
        clip_config({"vision_patchsize": 8})
    with pytest.raises(UserError, match="unknown CLIP preset"):
        clip_config("huge")


def test_train_clip_cli_rejects_bad_config(cache, tmp_path, capsys):
    from mm2latent.cli.main import main

    base = ["train", "clip", "--data", str(cache), "--out", str(tmp_path / "r"), "--steps", "1", "--batch", "4"]
    with pytest.raises(SystemExit) as e:  # argparse: one line, exit 2
        main(base + ["--config", "{not json"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--config" in err and "JSON object" in err and err.count("\n") == 1
    assert main(base + ["--config", '{"vision_patchsize": 8}']) != 0
    assert "unknown CLIP config fields: vision_patchsize" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_attribute_head_from_init_learns_and_resumes_exactly(cache, tmp_path):
    """--init starts from an exported CLIP (its config and weights); --attr-weight trains one
    attribute head shared by both towers (renderer attributes for images, stated facts for
    captions): it learns, is part of the exact-resume state, and is not exported."""
    from mm2latent.models.clip import load_clip, save_clip
    from mm2latent.train.clip import fact_targets

    value, mask = fact_targets([{"Smiling": True, "Eyeglasses": False}, {}])
    from mm2latent.world.attributes import ATTRIBUTES

    j, k = ATTRIBUTES.index("Smiling"), ATTRIBUTES.index("Eyeglasses")
    assert mask[0].sum() == 2 and mask[1].sum() == 0 and value[0, j] == 1 and value[0, k] == 0
    base = train_clip(_opts(cache, tmp_path / "base", 2))
    save_clip(base.model, tmp_path / "init")

    def opts(out, steps):
        o = CLIPTrainOptions(data=str(cache), out=str(out), steps=steps, batch=16, lr=3e-3, warmup=2, ckpt_every=3,
                             config="world_small", init=str(tmp_path / "init.safetensors"), attr_weight=1.0)
        return o

    from mm2latent.train.clip import CLIPTrainer

    started = CLIPTrainer(opts(tmp_path / "s", 1))  # before any step: the init weights as they are
    for (k_, a), (_, b) in zip(base.model.state_dict().items(), started.model.state_dict().items()):
        assert torch.equal(a, b), k_
    full = train_clip(opts(tmp_path / "full", 30), export=str(tmp_path / "exp"))
    import json

    rec = [json.loads(l) for l in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert all("attr_img" in r and "attr_txt" in r for r in rec)
    assert rec[-1]["attr_img"] < rec[0]["attr_img"] - 0.1
    exported = load_clip(tmp_path / "exp.safetensors")
    assert exported.config.to_dict() == base.model.config.to_dict()  # the init's config, not world_small
    assert not any("attr_head" in n for n in exported.state_dict())
    train_clip(opts(tmp_path / "part", 30), stop_at=4)
    resumed = train_clip(opts(tmp_path / "part", 30), resume=True)
    for (k_, a), (_, b) in zip(full.attr_head.state_dict().items(), resumed.attr_head.state_dict().items()):
        assert torch.equal(a, b), k_
    for (k_, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k_
