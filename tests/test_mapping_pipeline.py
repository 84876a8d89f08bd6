"""MappingNet, its data generation and training, the Pipeline and `mm2latent generate` (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm2latent.cli.main import main
from mm2latent.common.errors import UserError
from mm2latent.common.palette import PALETTE
from mm2latent.models.mapping import MappingNet, MappingNetConfig, w_loss
from mm2latent.pipeline import Pipeline, prepare_coeffs, prepare_mask, prepare_sketch
from mm2latent.train.mapping import MappingTrainOptions, pseudo_text, train_mapping
from mm2latent.train.mapping_data import generate_mapping_data, load_mapping_data

from helpers import S, build_tiny_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A complete weights directory of tiny random models, plus MappingNet data and a trained MappingNet."""
    return build_tiny_weights(tmp_path_factory.mktemp("weights"), tmp_path_factory.mktemp("mdata") / "d",
                              tmp_path_factory.mktemp("mrun"))


@pytest.fixture(scope="module")
def mdata(weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mdata2") / "d"
    generate_mapping_data(out, num=40, weights=str(weights), chunk=16, seed=3)
    return out


# --------------------------------------------------------------------------- MappingNet


def test_mappingnet_shapes_and_absent_embeddings():
    torch.manual_seed(0)
    net = MappingNet(MappingNetConfig(dims={"text": 8, "mask": 6}, w_dim=5, hidden=16, layers=3)).eval()
    t, m = torch.randn(4, 8), torch.randn(4, 6)
    assert net({"text": t, "mask": m}).shape == (4, 5)
    # None == the learned absent embedding == flagged absent
    a = net({"text": t, "mask": None})
    b = net({"text": t, "mask": m}, present={"mask": torch.zeros(4, dtype=torch.bool)})
    assert torch.allclose(a, b)
    assert not torch.allclose(a, net({"text": t, "mask": m}))
    # mixed per-row presence: row 0 uses m, others the absent vector
    x = net.assemble({"text": t, "mask": m}, present={"mask": torch.tensor([True, False, False, False])})
    assert torch.equal(x[0, 8:], m[0]) and torch.allclose(x[1, 8:], net.absent["mask"])
    with pytest.raises(UserError):
        net({"text": None, "mask": None})
    assert net({"text": None, "mask": None}, batch=2).shape == (2, 5)
    with pytest.raises(UserError):
        net({"sketch": torch.randn(4, 3)})
    wp = MappingNet(MappingNetConfig(dims={"text": 8}, w_dim=5, num_ws=3, hidden=16, layers=2)).eval()
    assert wp({"text": t}).shape == (4, 3, 5)


def test_mappingnet_config_validation_and_roundtrip():
    c = MappingNetConfig(dims={"mask": 4, "text": 3}, w_dim=7)
    assert list(c.dims) == ["text", "mask"]  # canonical order
    assert MappingNetConfig.from_dict(c.to_dict()) == c
    for bad in ({"dims": {"colour": 3}}, {"dims": {}}, {"dropout": 1.0}, {"layers": 0}):
        with pytest.raises(UserError):
            MappingNetConfig(**bad)
    with pytest.raises(UserError):
        MappingNetConfig.from_dict({"depth": 3})


def test_w_loss_and_pseudo_text():
    w = torch.randn(6, 4)
    loss, st = w_loss(w, w)
    assert loss.item() == pytest.approx(0, abs=1e-6)
    loss, st = w_loss(-w, w)
    assert st["cos"] == pytest.approx(2.0, abs=1e-5) and st["l1"] == pytest.approx(2 * w.abs().mean().item(), rel=1e-5)
    # W+ prediction against a W target
    assert w_loss(w[:, None].repeat(1, 3, 1), w)[0].item() == pytest.approx(0, abs=1e-6)
    e = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    assert torch.allclose(pseudo_text(e, 0.0), e)
    p = pseudo_text(e, 0.1)
    assert torch.allclose(p.norm(dim=-1), torch.ones(5), atol=1e-5) and not torch.allclose(p, e)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(pseudo_text(e, 0.1, g1), pseudo_text(e, 0.1, g2))


# --------------------------------------------------------------------------- data generation


def test_mapping_data_contents_resume_and_shards(weights, mdata, tmp_path):
    d = load_mapping_data(mdata)
    assert d["w"].shape == (40, 16) and d["z"].shape == (40, 16)
    assert d["mask"].shape == (40, S, S) and d["mask"].max() < 19
    assert d["sketch"].shape == (40, S, S) and set(np.unique(d["sketch"])) <= {0, 1}
    for k in ("image_emb", "mask_emb", "sketch_emb", "coeff_emb"):
        assert d[k].shape == (40, 32) and np.isfinite(d[k].astype(np.float32)).all()
    assert np.allclose(np.linalg.norm(d["image_emb"].astype(np.float32), axis=1), 1, atol=1e-2)
    assert np.abs(d["coeffs"]).max() <= 1
    # the stored w really is G.mapping(z)
    from mm2latent.models.stylegan2 import load_generator

    G = load_generator(weights / "generator.safetensors")
    assert np.allclose(G.mapping(torch.from_numpy(d["z"][:4])).numpy(), d["w"][:4], atol=1e-5)
    # rerun skips finished chunks
    chunk0 = mdata / "chunk-00000.npz"
    t0 = chunk0.stat().st_mtime_ns
    generate_mapping_data(mdata, num=40, weights=str(weights), chunk=16, seed=3)
    assert chunk0.stat().st_mtime_ns == t0
    # two shards together == one process
    sh = tmp_path / "sh"
    generate_mapping_data(sh, num=40, weights=str(weights), chunk=16, seed=3, shard=(1, 2))
    with pytest.raises(UserError, match="incomplete"):
        load_mapping_data(sh)
    generate_mapping_data(sh, num=40, weights=str(weights), chunk=16, seed=3, shard=(0, 2))
    d2 = load_mapping_data(sh)
    for k in d:
        assert np.array_equal(d[k], d2[k]), k
    with pytest.raises(UserError, match="other settings"):
        generate_mapping_data(sh, num=41, weights=str(weights), chunk=16, seed=3)
    with pytest.raises(UserError):
        generate_mapping_data(tmp_path / "x", num=4, weights=str(weights), shard=(2, 2))


# --------------------------------------------------------------------------- training


def test_reembed_recomputes_control_embeddings_only(weights, mdata, tmp_path, capsys):
    """mapping-reembed: a copy whose mask embeddings come from another mask AE, read from the
    stored masks (what the generator pass would have produced with that AE); every other array is
    unchanged, the source untouched, and the result loads and trains."""
    from mm2latent.models.controls import resize_labels
    from mm2latent.models.registry import load_module_file
    from mm2latent.train.mapping_data import reembed_mapping_data

    src_bytes = {p.name: p.read_bytes() for p in mdata.iterdir()}
    old_ae = load_module_file(weights / "mask_ae.safetensors", "mask_ae")
    new_ae = type(old_ae)(old_ae.config)  # another (random) mask AE of the same shape
    torch.manual_seed(5)
    for p_ in new_ae.parameters():
        torch.nn.init.normal_(p_, std=0.1)
    from mm2latent.models.registry import save_module

    save_module(new_ae, tmp_path / "mask_ae.safetensors")
    out = tmp_path / "re"
    assert main(["mapping-reembed", str(mdata), "--out", str(out), "--mask-ae", str(tmp_path / "mask_ae.safetensors")]) == 0
    a, b = load_mapping_data(mdata), load_mapping_data(out)
    ref_ae = load_module_file(tmp_path / "mask_ae.safetensors", "mask_ae")
    with torch.no_grad():
        want = ref_ae.encode(resize_labels(torch.from_numpy(a["mask"]).long(), ref_ae.config.size)).numpy()
    assert np.allclose(b["mask_emb"].astype(np.float32), want, atol=1e-2)
    assert not np.allclose(b["mask_emb"], a["mask_emb"])
    for k in a:
        if k != "mask_emb":
            assert np.array_equal(a[k], b[k]), k
    assert {p.name: p.read_bytes() for p in mdata.iterdir()} == src_bytes
    assert json.loads((out / "meta.json").read_text())["reembedded"] == {"mask": str(tmp_path / "mask_ae.safetensors")}
    capsys.readouterr()
    for argv in (["mapping-reembed", str(mdata), "--out", str(mdata), "--mask-ae", str(tmp_path / "mask_ae.safetensors")],
                 ["mapping-reembed", str(mdata), "--out", str(tmp_path / "x")],
                 ["mapping-reembed", str(mdata), "--out", str(tmp_path / "y"), "--mask-ae", str(weights / "parser.safetensors")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mm2latent: error:") and "\n" not in err


def test_reembed_with_a_new_encoder_resynthesises_image_embeddings(weights, mdata, tmp_path, capsys):
    """mapping-reembed --encoder: the stored w synthesised again reproduce the stored image
    embeddings with the encoder the data was made with; another encoder changes image_emb only."""
    from mm2latent.models.clip import load_clip, save_clip

    same = tmp_path / "same"
    assert main(["mapping-reembed", str(mdata), "--out", str(same), "--encoder", str(weights / "encoder.safetensors"),
                 "--generator", str(weights / "generator.safetensors")]) == 0
    a, b = load_mapping_data(mdata), load_mapping_data(same)
    assert np.allclose(a["image_emb"].astype(np.float32), b["image_emb"].astype(np.float32), atol=2e-3)
    other = load_clip(weights / "encoder.safetensors")
    torch.manual_seed(9)
    with torch.no_grad():
        for p_ in other.visual.parameters():
            p_.add_(0.2 * torch.randn_like(p_))
    save_clip(other, tmp_path / "enc2")
    out = tmp_path / "re"
    assert main(["mapping-reembed", str(mdata), "--out", str(out), "--encoder", str(tmp_path / "enc2.safetensors"),
                 "--generator", str(weights / "generator.safetensors")]) == 0
    c = load_mapping_data(out)
    assert np.abs(c["image_emb"].astype(np.float32) - a["image_emb"].astype(np.float32)).max() > 0.05
    assert np.allclose(np.linalg.norm(c["image_emb"].astype(np.float32), axis=1), 1, atol=1e-2)
    for k in a:
        if k != "image_emb":
            assert np.array_equal(a[k], c[k]), k
    capsys.readouterr()
    assert main(["mapping-reembed", str(mdata), "--out", str(tmp_path / "z"), "--generator",
                 str(weights / "generator.safetensors"), "--mask-ae", str(weights / "mask_ae.safetensors")]) == 2
    assert "--generator is only used with --encoder" in capsys.readouterr().err


def test_mapping_training_learns_and_resumes_exactly(mdata, tmp_path):
    data = load_mapping_data(mdata)
    o = dict(data=str(mdata), batch=16, text_noise_std=0.05, ckpt_minutes=1e-9)
    train_mapping(MappingTrainOptions(out=str(tmp_path / "a"), steps=12, **o))
    first = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[0])
    last = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[-1])
    assert last["val_all_l1"] < first["val_all_l1"]
    # interrupted after 6 steps (checkpoint written and read back), resumed for 6 more == 12 straight steps
    from mm2latent.train import state as ckpt
    from mm2latent.train.mapping import TRAIN_KIND, MappingTrainer

    torch.manual_seed(123)
    opts = MappingTrainOptions(out=str(tmp_path / "b"), steps=12, **o)
    straight = MappingTrainer(opts, data)
    for _ in range(12):
        straight.train_step()
    torch.manual_seed(123)
    first_half = MappingTrainer(opts, data)
    for _ in range(6):
        first_half.train_step()
    tensors, meta = first_half.state()
    stem = ckpt.write_checkpoint(tmp_path / "b", first_half.step, tensors, meta, TRAIN_KIND)
    torch.manual_seed(999)  # a new process starts from another RNG state
    resumed = MappingTrainer(opts, data)
    resumed.load_state(*ckpt.read_checkpoint(stem, TRAIN_KIND))
    for _ in range(6):
        resumed.train_step()
    for (k, p), q in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(p, q), k
    with pytest.raises(UserError, match="--resume"):
        train_mapping(MappingTrainOptions(out=str(tmp_path / "a"), steps=12, **o))
    meta = json.loads((tmp_path / "a" / "mapping_net.json").read_text())
    assert meta["text_noise_std"] == 0.05 and meta["kind"] == "mapping_net"


def test_mapping_image_space_terms(weights, mdata):
    """--seg-weight / --attr-weight: the judges' losses on G(w_pred) share one generator pass,
    are what they say (checked against a direct computation), send gradient into MappingNet
    only (generator and judges stay frozen), and the parser term lowers itself in training."""
    import torch.nn.functional as F

    from mm2latent.train.mapping import MappingTrainer

    data = load_mapping_data(mdata)
    o = dict(data=str(mdata), out="unused", batch=16, text_noise_std=0.0, drop_prob=0.0, steps=40, lr=3e-3,
             weights=str(weights), seg_batch=8)
    torch.manual_seed(0)
    tr = MappingTrainer(MappingTrainOptions(**o, seg_weight=1.0, attr_weight=1.0), data)
    assert tr.G is not None and tr.parser is not None and tr.analyzer is not None
    idx = torch.arange(8)
    emb, _ = tr.inputs(idx, train=False)
    tr.net.train()
    torch.manual_seed(1)
    pred = tr.net(emb)
    stats: dict = {}
    tr.net.zero_grad()
    tr.image_space_loss(pred, idx, stats).backward()
    with torch.no_grad():
        x = tr.G.synthesis(tr.G.broadcast(pred), noise_mode="const")
        want_attr = F.binary_cross_entropy_with_logits(tr.analyzer(x)[0], tr.t["attributes"][idx]).item()
        want_seg = F.cross_entropy(tr.parser(x), tr.t["mask"][idx].long()).item()
    assert stats["attr"] == pytest.approx(want_attr, rel=1e-4) and stats["seg"] == pytest.approx(want_seg, rel=1e-4)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.net.parameters())
    assert all(p.grad is None for p in list(tr.G.parameters()) + list(tr.analyzer.parameters()))
    # the parser term goes down when it is trained on
    torch.manual_seed(0)
    seg_only = MappingTrainer(MappingTrainOptions(**o, seg_weight=1.0), data)
    logs = [seg_only.train_step()["seg"] for _ in range(40)]
    assert np.mean(logs[-5:]) < np.mean(logs[:5])
    # the attribute term alone needs no parser
    only = MappingTrainer(MappingTrainOptions(**o, attr_weight=0.5), data)
    assert only.parser is None and "attr" in only.train_step() and "seg" not in only.stats
    with pytest.raises(UserError, match="attr-weight"):
        MappingTrainer(MappingTrainOptions(**o, attr_weight=-1.0), data)


def test_mapping_init_fine_tunes_an_exported_net(weights, mdata):
    """--init: the run starts from the exported MappingNet's weights and w statistics
    (same predictions before any step); a net of another shape is refused in one line."""
    from mm2latent.models.registry import load_module_file
    from mm2latent.train.mapping import MappingTrainer

    data = load_mapping_data(mdata)
    src = weights / "mapping_net.safetensors"
    tr = MappingTrainer(MappingTrainOptions(data=str(mdata), out="unused", batch=16, steps=5, init=str(src)), data)
    ref = load_module_file(src, "mapping_net")
    for (k, a), b in zip(ref.state_dict().items(), tr.net.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(UserError, match="another shape"):
        MappingTrainer(MappingTrainOptions(data=str(mdata), out="unused", batch=16, steps=5, hidden=64,
                                           init=str(src)), data)
    # a W net starts a W+ run: the same w at every generator layer before any step
    wide = MappingTrainer(MappingTrainOptions(data=str(mdata), out="unused", batch=16, steps=5, wplus=True,
                                              weights=str(weights), init=str(src)), data)
    assert wide.net.config.num_ws == wide.G.num_ws > 1
    emb, _ = tr.inputs(torch.arange(6), train=False)
    tr.net.eval(), wide.net.eval()
    with torch.no_grad():
        w, wp = ref.eval()(emb), wide.net(emb)
    assert wp.shape == (6, wide.G.num_ws, w.shape[1])
    assert torch.allclose(wp, w.unsqueeze(1).expand_as(wp), atol=1e-5)
    wide.train_step()  # and it trains


# --------------------------------------------------------------------------- pipeline


def test_pipeline_generate_is_deterministic_and_seeded(weights):
    pipe = Pipeline.from_pretrained(weights)
    a = pipe.generate(text="a smiling woman with blond hair", seed=1)
    b = pipe.generate(text="a smiling woman with blond hair", seed=1)
    c = pipe.generate(text="a smiling woman with blond hair", seed=2)
    assert a.size == (S, S) and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    batch = pipe.generate_batch(text="a smiling woman with blond hair", seeds=[1, 2])
    assert np.abs(np.asarray(batch[0], np.int16) - np.asarray(a, np.int16)).max() <= 1
    # every modality, alone and together
    mask = np.zeros((S, S), np.uint8)
    mask[8:24, 8:24] = 1
    sketch = np.full((S, S), 255, np.uint8)
    sketch[16, :] = 0
    for kw in ({"mask": mask}, {"sketch": sketch}, {"coeffs": {"yaw": 10}},
               {"text": "a man", "mask": PALETTE[mask], "sketch": sketch, "coeffs": [0.0] * 13}):
        assert pipe.generate(**kw).size == (S, S)
    # truncation 0 gives the mean face whatever the text
    t0 = [np.asarray(pipe.generate(text=t, seed=0, truncation=0.0)) for t in ("a man", "a woman")]
    assert np.array_equal(t0[0], t0[1])


def test_text_guidance_extrapolates_the_text_effect(weights, tmp_path):
    """w+ with guidance g from layer k = w + g * (w - w_without_text) on layers k.., w before k;
    no effect without text or at g = 0; defaults read from mapping_net.json; bad values refused."""
    pipe = Pipeline.from_pretrained(weights)
    assert pipe.text_guidance == 0.0 and pipe.guidance_from_layer == 0  # files without the keys: off
    emb = pipe.embed(text="a smiling woman with blond hair", mask=np.pad(np.ones((S - 8, S - 8), np.uint8), 4))
    seeds = [3, 4]
    plain = pipe.latents(emb, seeds)
    # the same noisy text embedding the pipeline draws, to rebuild both terms by hand
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    e = emb["text"].expand(2, -1)
    noisy = torch.nn.functional.normalize(
        e + pipe.text_noise_std * torch.stack([torch.randn(e.shape[1], generator=g) for g in gens]), dim=-1)
    full = {**emb, "text": noisy, "mask": emb["mask"].expand(2, -1)}
    w = pipe.mapping(full, batch=2)
    w_without = pipe.mapping({**full, "text": None}, batch=2)
    assert torch.allclose(plain, pipe.G.broadcast(w), atol=1e-6)
    k = pipe.G.num_ws // 2
    pipe.set_text_guidance(1.5, k)
    guided = pipe.latents(emb, seeds)
    assert torch.allclose(guided[:, :k], plain[:, :k], atol=1e-6)
    assert torch.allclose(guided[:, k:], (w + 1.5 * (w - w_without))[:, None].expand_as(guided[:, k:]), atol=1e-5)
    assert not torch.allclose(guided, plain)
    # an explicit scale overrides the default; 0 switches it off
    assert torch.allclose(pipe.latents(emb, seeds, text_guidance=0.0), plain, atol=1e-6)
    # text alone: every layer is guided (nothing states a layout to keep)
    t_only = pipe.embed(text="a man")
    full_t = {**t_only, "text": torch.nn.functional.normalize(
        t_only["text"].expand(2, -1) + pipe.text_noise_std * torch.stack(
            [torch.randn(t_only["text"].shape[1], generator=torch.Generator().manual_seed(s)) for s in seeds]), dim=-1)}
    wt, wt0 = pipe.mapping(full_t, batch=2), pipe.mapping({**full_t, "text": None}, batch=2)
    assert torch.allclose(pipe.latents(t_only, seeds), pipe.G.broadcast(wt + 1.5 * (wt - wt0)), atol=1e-5)
    # no text: nothing to guide
    mask_only = pipe.embed(mask=np.pad(np.ones((S - 8, S - 8), np.uint8), 4))
    pipe.set_text_guidance(0.0, 0)
    ref = pipe.latents(mask_only, seeds)
    pipe.set_text_guidance(2.0, 0)
    assert torch.allclose(pipe.latents(mask_only, seeds), ref, atol=1e-6)
    # deterministic through generate, and different from unguided
    a = np.asarray(pipe.generate(text="a man", seed=1))
    assert np.array_equal(a, np.asarray(pipe.generate(text="a man", seed=1)))
    assert not np.array_equal(a, np.asarray(pipe.generate(text="a man", seed=1, text_guidance=0.0)))
    for bad in ((-1.0, 0), (float("nan"), 0), (1.0, pipe.G.num_ws), (1.0, -1)):
        with pytest.raises(UserError, match="guidance"):
            pipe.set_text_guidance(*bad)
    with pytest.raises(UserError, match="guidance"):
        pipe.generate(text="a man", text_guidance=50.0)
    # defaults come from mapping_net.json
    import shutil

    d = tmp_path / "w"
    shutil.copytree(weights, d)
    before = json.loads((d / "mapping_net.json").read_text())
    # `mm2latent mapping-guidance` writes them; every other key stays as it was
    assert main(["mapping-guidance", str(d / "mapping_net.safetensors"), "--text-guidance", "1.5",
                 "--from-layer", str(k), "--note", "chosen on val"]) == 0
    meta = json.loads((d / "mapping_net.json").read_text())
    assert meta == {**before, "text_guidance": 1.5, "guidance_from_layer": k, "inference_selection": "chosen on val"}
    p2 = Pipeline.from_pretrained(d)
    assert (p2.text_guidance, p2.guidance_from_layer) == (1.5, k)
    assert torch.allclose(p2.latents(emb, seeds), guided, atol=1e-6)
    # bad values and files other than a MappingNet are refused and leave the file alone
    for args in (["--text-guidance", "-1", "--from-layer", "0"], ["--text-guidance", "1", "--from-layer", "-2"]):
        assert main(["mapping-guidance", str(d / "mapping_net.safetensors"), *args]) == 2
    assert main(["mapping-guidance", str(d / "mask_ae.safetensors"), "--text-guidance", "1", "--from-layer", "0"]) == 2
    assert json.loads((d / "mapping_net.json").read_text()) == meta
    # a layer beyond the generator's is caught when the pair is loaded
    assert main(["mapping-guidance", str(d / "mapping_net.safetensors"), "--text-guidance", "1",
                 "--from-layer", str(p2.G.num_ws)]) == 0
    with pytest.raises(UserError, match="guidance"):
        Pipeline.from_pretrained(d)


def test_pipeline_bad_inputs(weights, tmp_path):
    pipe = Pipeline.from_pretrained(weights)
    for kw, msg in (({}, "at least one"), ({"text": "   "}, "empty"), ({"text": 3}, "string"),
                    ({"coeffs": {"yaw": float("nan")}}, "finite"), ({"coeffs": {"wink": 1}}, "unknown"),
                    ({"coeffs": [1, 2]}, "expected 13"), ({"mask": np.full((S, S, 3), 7, np.uint8)}, "colour|color|palette"),
                    ({"mask": np.full((S, S), 40)}, "0..18"), ({"sketch": np.zeros((S, S), np.uint8)}, "no lines"),
                    ({"mask": np.zeros((4, 4), np.uint8)}, "too small"),
                    ({"text": "a man", "truncation": 5.0}, "truncation")):
        with pytest.raises(UserError, match=msg):
            pipe.generate(**kw)
    # out-of-range coefficients are clipped, not refused; text in another script still works
    assert torch.allclose(prepare_coeffs({"yaw": 500}), prepare_coeffs({"yaw": 30}))
    assert pipe.generate(text="улыбающаяся женщина 🙂").size == (S, S)
    # an all-black "sketch" with white lines is read with the right polarity
    inv = np.zeros((S, S), np.uint8)
    inv[16, :] = 255
    pos = np.full((S, S), 255, np.uint8)
    pos[16, :] = 0
    assert torch.equal(prepare_sketch(inv, S), prepare_sketch(pos, S))
    # a colour mask file and an index mask file read the same
    m = np.zeros((S, S), np.uint8)
    m[4:20, 6:30] = 13
    Image.fromarray(PALETTE[m]).save(tmp_path / "c.png")
    Image.fromarray(m).save(tmp_path / "i.png")
    assert torch.equal(prepare_mask(tmp_path / "c.png", S), prepare_mask(tmp_path / "i.png", S))
    with pytest.raises(UserError, match="no generator weights"):
        Pipeline.from_pretrained(tmp_path)


def test_cli_generate(weights, tmp_path, capsys):
    m = np.zeros((S, S), np.uint8)
    m[4:28, 4:28] = 1
    Image.fromarray(PALETTE[m]).save(tmp_path / "m.png")
    out = tmp_path / "face.png"
    assert main(["generate", "--text", "a man", "--mask", str(tmp_path / "m.png"), "--weights", str(weights),
                 "--out", str(out)]) == 0
    assert Image.open(out).size == (S, S)
    assert main(["generate", "--text", "a man", "--num", "3", "--weights", str(weights), "--out",
                 str(tmp_path / "many")]) == 0
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["grid.png", "seed0000.png", "seed0001.png",
                                                                     "seed0002.png"]
    capsys.readouterr()
    before = (tmp_path / "m.png").read_bytes()
    for argv in (["generate", "--out", str(out)],
                 ["generate", "--text", "x", "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "m.png")],
                 ["generate", "--text", "", "--weights", str(weights), "--out", str(tmp_path / "e.png")],
                 ["generate", "--text", "x", "--mask", str(tmp_path / "nope.png"), "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mm2latent: error:") and "\n" not in err
    assert (tmp_path / "m.png").read_bytes() == before and not (tmp_path / "e.png").exists()


def test_eval_generation_report(weights):
    from mm2latent.eval.pipeline import evaluate_pipeline, fact_accuracy

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    import mm2latent.eval.pipeline as ep

    names = ep.ATTRIBUTES[:2]
    r = fact_accuracy(torch.nn.functional.pad(probs, (0, len(ep.ATTRIBUTES) - 2)),
                      [{names[0]: True, names[1]: True}, {names[0]: False, names[1]: False}])
    assert r["accuracy"] == 0.5 and r["facts"] == 4
    pipe = Pipeline.from_pretrained(weights)
    rep = evaluate_pipeline(pipe, num=3, batch=2, diversity_seeds=2)
    assert 0 <= rep["text_fidelity"]["in_grammar"]["text"]["accuracy"] <= 1
    assert 0 <= rep["mask_fidelity"]["text+mask_miou"] <= 1
    assert set(rep["diversity"]) and all(v["embedding_distance"] >= 0 for v in rep["diversity"].values())


# --------------------------------------------------------------------------- inversion and editing


def test_invert_and_edit(weights):
    pipe = Pipeline.from_pretrained(weights)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
    inv = pipe.invert(photo)
    assert inv.ws.shape == (1, pipe.G.num_ws, 16) and inv.reconstruction.shape == (1, 3, S, S)
    assert "centre-cropped 40x48" in inv.alignment and "resized" in inv.alignment
    ref = pipe.invert(photo, refine_steps=15, lr=0.05)
    assert ref.history[-1] < ref.history[0]
    rec = np.asarray(pipe.reconstruct(photo))
    # strength 0 leaves the inverted face unchanged, in both modes
    for mode in ("delta", "blend"):
        assert np.array_equal(np.asarray(pipe.edit(inv, text="a man", strength=0.0, mode=mode)), rec)
    assert not np.array_equal(np.asarray(pipe.edit(inv, text="a man", mode="blend")), rec)
    m = np.zeros((S, S), np.uint8)
    m[4:28, 4:28] = 1
    assert pipe.edit(inv, mask=m, strength=1.0).size == (S, S)
    for kw, msg in (({}, "what to change"), ({"text": "x", "strength": 3.0}, "strength"),
                    ({"text": "x", "mode": "swap"}, "mode")):
        with pytest.raises(UserError, match=msg):
            pipe.edit(inv, **kw)
    with pytest.raises(UserError, match="too small"):
        pipe.invert(np.zeros((8, 8, 3), np.uint8))


def test_cli_invert_and_edit(weights, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 64, 3), dtype=np.uint8)).convert("CMYK").save(
        tmp_path / "photo.jpg")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 64), dtype=np.uint8), "L").save(photo)
    before = photo.read_bytes()
    assert main(["invert", str(photo), "--out", str(tmp_path / "rec.png"), "--weights", str(weights)]) == 0
    assert "centre-cropped 64x50" in capsys.readouterr().out
    assert np.load(tmp_path / "rec.npy").shape[0] == 1
    assert main(["edit", str(tmp_path / "photo.jpg"), "--text", "a woman with blond hair", "--weights", str(weights),
                 "--out", str(tmp_path / "e.png")]) == 0
    assert Image.open(tmp_path / "e.png").size == (S, S)
    capsys.readouterr()
    for argv in (["edit", str(photo), "--text", "x", "--out", str(photo)],
                 ["edit", str(photo), "--out", str(tmp_path / "f.png"), "--weights", str(weights)],
                 ["invert", str(tmp_path / "missing.png"), "--out", str(tmp_path / "g.png")]):
        assert main(argv) == 2
        assert capsys.readouterr().err.startswith("mm2latent: error:")
    assert photo.read_bytes() == before and not (tmp_path / "f.png").exists()


def test_psnr_ssim_known_cases():
    from mm2latent.eval.editing import psnr, ssim

    x = torch.rand(2, 3, 24, 24) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert psnr(x, x).min() > 100
    y = x + 0.2  # MSE 0.04 on a peak-to-peak range of 2 -> 10 log10(4 / 0.04) = 20 dB
    assert torch.allclose(psnr(y, x), torch.full((2,), 20.0), atol=1e-3)
    assert (ssim(x, torch.rand(2, 3, 24, 24) * 2 - 1) < 0.2).all()


def test_eval_editing_report(weights, capsys):
    from mm2latent.eval.editing import evaluate_editing

    rep = evaluate_editing(Pipeline.from_pretrained(weights), num=3, refine_steps=2, refine_num=1)
    assert rep["inversion"]["encoder"]["psnr"] > 0 and 0 <= rep["inversion"]["encoder"]["ssim"] <= 1
    for mode in ("delta", "blend"):
        assert 0 <= rep["mask_edits"][mode]["miou_with_edited_mask"] <= 1
    assert main(["eval", "editing", "--weights", str(weights), "--num", "2", "--refine", "1", "--refine-num", "1"]) == 0
    assert '"inversion"' in capsys.readouterr().out


def test_full_report_runs_and_resumes(weights, tmp_path, capsys):
    out = tmp_path / "rep"
    argv = ["eval", "--out", str(out), "--num", "10", "--weights", str(weights), "--opt-steps", "1", "2", "--bank", "12",
            "--ablation", f"same={weights / 'mapping_net.safetensors'}"]
    assert main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    rows = rep["rows"]
    assert {"mm2latent/text+mask", "optimisation-1/text+mask", "optimisation-2/text+mask", "retrieval/text+mask",
            "ablation/same/text"} <= set(rows)
    # both budgets come from one run (the shorter is a snapshot), timed up to their own step
    assert 0 < rows["optimisation-1/text+mask"]["seconds_per_image"] < rows["optimisation-2/text+mask"]["seconds_per_image"]
    assert all(0 <= r["text_fidelity"] <= 1 for r in rows.values())
    assert "mask_miou" in rows["mm2latent/text+mask"] and "sketch_fscore" in rows["mm2latent/text+sketch"]
    assert (out / "grid.png").exists() and (out / "bars.png").exists() and "| method |" in (out / "report.md").read_text()
    # resumable: cached methods are not recomputed
    cached = sorted(p.name for p in (out / "cache").glob("*.safetensors"))
    stamp = {p: (out / "cache" / p).stat().st_mtime_ns for p in cached}
    assert main(argv) == 0
    assert all((out / "cache" / p).stat().st_mtime_ns == t for p, t in stamp.items())
    # other weights into the same directory: the cached images are not theirs, so all are made again
    # (a rerun with a new generator once reported the old generator's figures)
    import shutil

    other = tmp_path / "other_weights"
    shutil.copytree(weights, other)
    from mm2latent.models.stylegan2 import load_generator, save_generator

    G = load_generator(other / "generator.safetensors")
    with torch.no_grad():
        next(G.synthesis.parameters()).add_(0.5)
    save_generator(other / "generator.safetensors", G)
    before = (out / "cache" / "mm2latent__text.safetensors").read_bytes()
    assert main(["eval", "--out", str(out), "--num", "10", "--weights", str(other), "--opt-steps", "1", "2",
                 "--bank", "12"]) == 0
    assert "other weights" in capsys.readouterr().err
    assert (out / "cache" / "mm2latent__text.safetensors").read_bytes() != before
    assert not (out / "cache" / "ablation__same__text.safetensors").exists()  # not asked for this time
    capsys.readouterr()


def test_baseline_snapshots_equal_shorter_runs(weights):
    """One optimisation run with snapshots gives exactly the codes of shorter runs, with growing times."""
    from mm2latent.eval.baselines import OptimisationConfig, optimise_latents
    from mm2latent.eval.pipeline import render_test
    from mm2latent.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(weights)
    data = render_test(2, pipe.resolution)
    te = pipe.controls.embed_text(data["caption"])
    final, info = optimise_latents(pipe, te, data["mask"], OptimisationConfig(steps=4), snapshot_steps=(2, 4))
    short, _ = optimise_latents(pipe, te, data["mask"], OptimisationConfig(steps=2))
    assert torch.equal(info["snapshots"][2], short) and torch.equal(info["snapshots"][4], final)
    assert not torch.equal(short, final)
    assert 0 < info["seconds_at"][2] < info["seconds_at"][4] <= info["seconds"]
    with pytest.raises(ValueError, match="snapshot steps"):
        optimise_latents(pipe, te, data["mask"], OptimisationConfig(steps=2), snapshot_steps=(3,))


def test_speed_bench_finds_the_budget_of_equal_fidelity():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generation_speed", Path(__file__).resolve().parents[1] / "bench" /
                                                  "generation_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = {"mm2latent": {"mask_miou": 0.5, "text_fidelity": 0.7},
           "optimisation_10": {"mask_miou": 0.4, "text_fidelity": 0.6}, "optimisation_10_over_mm2latent": 20.0,
           "optimisation_50": {"mask_miou": 0.55, "text_fidelity": 0.65}, "optimisation_50_over_mm2latent": 100.0,
           "optimisation_90": {"mask_miou": 0.6, "text_fidelity": 0.72}, "optimisation_90_over_mm2latent": 180.0}
    m = bench.matched_budgets(res, [10, 50, 90])
    assert m["mask_miou"] == {"steps": 50, "speed_ratio": 100.0}
    assert m["text_fidelity"] == m["both"] == {"steps": 90, "speed_ratio": 180.0}
    assert bench.matched_budgets(res, [10])["both"] == {"steps": None, "speed_ratio": None}


def test_baseline_tuning_on_validation_feeds_the_report(weights, tmp_path, capsys):
    """tune-baseline searches the grid on the validation split (never the test split)
    and its best settings drive the report's optimisation rows."""
    from mm2latent.eval.baselines import tune_optimisation
    from mm2latent.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(weights)
    grid = {"lr": (0.01, 0.1), "reg_weight": (0.02,)}
    res = tune_optimisation(pipe, num=3, steps=2, grid=grid, batch=2)
    assert res["split"] == "val" and len(res["rows"]) == 2
    assert all(0 <= r["text_fidelity"] <= 1 and 0 <= r["mask_miou"] <= 1 for r in res["rows"])
    best = max(res["rows"], key=lambda r: r["score"])
    assert res["best"] == {"lr": best["lr"], "reg_weight": best["reg_weight"]}
    with pytest.raises(ValueError, match="validation"):
        tune_optimisation(pipe, num=2, steps=1, grid=grid, split="test")
    tuned = tmp_path / "tuning.json"
    tuned.write_text(json.dumps({"best": {"lr": 0.05, "reg_weight": 0.01, "seg_weight": 2.0}}))
    out = tmp_path / "rep"
    assert main(["eval", "--out", str(out), "--num", "10", "--weights", str(weights), "--opt-steps", "2",
                 "--bank", "12", "--baseline-config", str(tuned)]) == 0
    cfg = json.loads((out / "report.json").read_text())["config"]
    assert cfg["optimisation_settings"] == {"lr": 0.05, "reg_weight": 0.01, "seg_weight": 2.0}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"best": {"steps": "many"}}))
    capsys.readouterr()
    assert main(["eval", "--out", str(tmp_path / "r2"), "--num", "10", "--weights", str(weights),
                 "--baseline-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "'best' must map" in err and len(err.strip().splitlines()) == 1


def test_mapping_data_from_the_posterior(weights, tmp_path):
    from mm2latent.models.registry import load_module_file
    from mm2latent.train.mapping_data import chunk_z
    from helpers import write_world_cache
    from mm2latent.world.cache import CachedWorldDataset

    root = write_world_cache(tmp_path / "cache", 5, 64)
    out = tmp_path / "post"
    generate_mapping_data(out, num=7, weights=str(weights), chunk=3, seed=5, source="posterior", renders=str(root))
    d = load_mapping_data(out)
    enc = load_module_file(weights / "image_encoder.safetensors", "image_encoder")
    x = CachedWorldDataset(root).batch([6 % 5])["image"]  # sample 6 encodes render 1
    x = torch.nn.functional.interpolate(x, size=(S, S), mode="bilinear", align_corners=False)
    with torch.no_grad():
        mu, lv = enc(x)
    want = mu + chunk_z(5, 6, 7, mu.shape[1]) * (0.5 * lv).exp()
    assert np.allclose(d["z"][6], want[0].numpy(), atol=1e-5)
    assert json.loads((out / "meta.json").read_text())["source"] == "posterior"
    with pytest.raises(UserError, match="renders"):
        generate_mapping_data(tmp_path / "p2", num=4, weights=str(weights), source="posterior")
    with pytest.raises(UserError, match="other settings"):
        generate_mapping_data(out, num=7, weights=str(weights), chunk=3, seed=5)


MAPPING_WORKER = r"""
import sys, numpy as np, torch
from safetensors.torch import save_file
from mm2latent.train.mapping import MappingTrainOptions, train_mapping
torch.set_num_threads(1)
out = sys.argv[1]
rng = np.random.default_rng(0)
n = 64
data = {"w": rng.normal(size=(n, 8)).astype(np.float32), "mask": np.zeros((n, 4, 4), np.uint8)}
for k in ("image_emb", "mask_emb", "sketch_emb", "coeff_emb"):
    data[k] = rng.normal(size=(n, 12)).astype(np.float32)
torch.manual_seed(0)
t = train_mapping(MappingTrainOptions(data="synthetic", out=out, steps=8, batch=16, hidden=16, layers=3,
                                      ckpt_minutes=1e9, threads=1), data=data)
save_file({k: v.contiguous() for k, v in t.net.state_dict().items()}, f"{out}/rank{t.env.rank}.safetensors")
"""


def test_mapping_training_under_torchrun_stays_in_sync(tmp_path):
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = tmp_path / "worker.py"
    script.write_text(MAPPING_WORKER)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                        "--nproc_per_node", "2", str(script), str(out)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert (out / "mapping_net.safetensors").exists()


def test_cli_eval_generator(weights, capsys):
    assert main(["eval", "generator", "--weights", str(weights), "--num", "20"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"generated", "renders_val", "blurred_val"} <= set(rep) and rep["generated"]["frechet"] >= 0


def test_pipeline_and_generator_eval_use_a_fitted_latent_prior(weights, tmp_path, capsys):
    """With latent_prior.safetensors beside the weights: truncation pulls towards its
    mean, variation draws from it, and `eval generator` reports fitted vs N(0, I)
    sampling and reconstructions."""
    import shutil

    from mm2latent.models.latent_prior import GaussianLatentPrior
    from mm2latent.models.registry import save_module

    d = tmp_path / "w"
    shutil.copytree(weights, d, ignore=shutil.ignore_patterns("_*"))
    g = torch.Generator().manual_seed(0)
    prior = GaussianLatentPrior.fit(torch.randn(400, 16, generator=g) * 0.1 + 2.0)
    save_module(prior, d / "latent_prior.safetensors", half=False)
    pipe = Pipeline.from_pretrained(d)
    assert pipe.latent_prior is not None and torch.equal(pipe.w_center, prior.mean)
    emb = pipe.embed(text="a man")
    ws = pipe.latents(emb, [0, 1], truncation=0.0)
    assert torch.allclose(ws, prior.mean.expand_as(ws))
    # variation 1 replaces the finest layers by a prior sample drawn from the seed
    wv = pipe.latents(emb, [3], variation=1.0, variation_layers=2)
    w0 = pipe.latents(emb, [3])
    assert torch.equal(wv, pipe.latents(emb, [3], variation=1.0, variation_layers=2))
    assert torch.equal(wv[0, :-2], w0[0, :-2]) and torch.equal(wv[0, -2], wv[0, -1])
    assert (wv[0, -1] - prior.mean).abs().max() < 0.6 < (w0[0, -1] - prior.mean).abs().max()
    plain = Pipeline.from_pretrained(weights)
    assert plain.latent_prior is None and torch.equal(plain.w_center, plain.G.w_avg)
    assert main(["eval", "generator", "--weights", str(d), "--num", "20"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"generated", "generated_normal", "reconstructed_val"} <= set(rep) and "fitted" in rep["sampling"]
