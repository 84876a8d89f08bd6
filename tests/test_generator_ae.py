"""Autoencoding StyleGAN2 trainer (the world generator) and the image encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mm2latent.common.errors import UserError
from mm2latent.models.inversion import ImageEncoder, ImageEncoderConfig, kl_to_standard_normal
from mm2latent.models.stylegan2 import load_generator
from mm2latent.models.registry import build_model, load_module_file, save_module
from mm2latent.train import state as ckpt
from mm2latent.train.generator_ae import TRAIN_KIND, GeneratorAEOptions, GeneratorAETrainer, train_generator_ae

SIZE = 64


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from helpers import write_world_cache

    return write_world_cache(tmp_path_factory.mktemp("gcache") / "c", 12, SIZE)


@pytest.fixture(scope="module")
def parser_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("parser") / "parser.safetensors"
    save_module(build_model("parser", {"base": 4, "depth": 3, "max_width": 16, "size": SIZE}), p)
    return p


def _opts(cache, out, **kw):
    base = dict(out=str(out), data=str(cache), batch=4, prior_batch=2, z_dim=16, w_dim=16, mapping_layers=2,
                channels=[16, 16, 8, 8, 8], d_channels=[16, 16, 8, 8, 8], enc_widths=[8, 8, 16, 16], adv_start=2,
                adv_every=1, r1_every=2, parser="", steps=6, sample_every=0)
    base.update(kw)
    return GeneratorAEOptions(**base)


def test_image_encoder_shapes_and_kl():
    enc = ImageEncoder(ImageEncoderConfig(size=64, z_dim=8, widths=[8, 8, 16, 16]))
    mu, lv = enc(torch.randn(3, 3, 64, 64))
    assert mu.shape == lv.shape == (3, 8)
    with pytest.raises(UserError):
        ImageEncoderConfig(size=64, widths=[8, 8])
    with pytest.raises(ValueError):
        enc(torch.randn(1, 3, 32, 32))
    z = torch.zeros(2, 5)
    assert torch.allclose(kl_to_standard_normal(z, z), torch.zeros(2))
    assert kl_to_standard_normal(torch.ones(1, 4), torch.zeros(1, 4)).item() == pytest.approx(2.0)


def test_training_reconstructs_better(cache, parser_file, tmp_path):
    torch.manual_seed(0)
    tr = GeneratorAETrainer(_opts(cache, tmp_path, parser=str(parser_file), seg_weight=0.1, adv_start=1000, lr=0.01,
                                  enc_lr=0.003, batch=12))
    x = tr.data.batch(list(range(12)))["image"]

    def rec_err():
        with torch.no_grad():
            return (tr.G.synthesis(tr.G.broadcast(tr.G.mapping(tr.E(x)[0])), noise_mode="const") - x).abs().mean().item()

    before = rec_err()
    for _ in range(25):
        s = tr.train_step()
    assert "seg" in s and "adv_G" not in s
    assert rec_err() < 0.8 * before


def test_adversarial_step_and_export(cache, tmp_path):
    tr = train_generator_ae(_opts(cache, tmp_path, steps=4))
    assert "adv_G" in tr.stats and "loss_D" in tr.stats
    G = load_generator(tmp_path / "generator.safetensors")
    assert G(torch.randn(2, 16)).shape == (2, 3, SIZE, SIZE)
    E = load_module_file(tmp_path / "image_encoder.safetensors", "image_encoder")
    assert E(torch.zeros(1, 3, SIZE, SIZE))[0].shape == (1, 16)
    info = json.loads((tmp_path / "generator.json").read_text())["training"]
    assert info["step"] == 4 and "VAE-GAN" in info["method"]
    with pytest.raises(UserError, match="--resume"):
        train_generator_ae(_opts(cache, tmp_path, steps=8))


def test_resume_is_exact(cache, tmp_path):
    torch.manual_seed(0)
    a = train_generator_ae(_opts(cache, tmp_path / "a", steps=6))
    torch.manual_seed(0)
    train_generator_ae(_opts(cache, tmp_path / "b", steps=3))
    torch.manual_seed(77)
    b = train_generator_ae(_opts(cache, tmp_path / "b", steps=6, resume=True))
    for name in ("G", "D", "E", "G_ema"):
        for (k, p), q in zip(getattr(a, name).state_dict().items(), getattr(b, name).state_dict().values()):
            assert torch.equal(p, q), f"{name}.{k}"
    stem = ckpt.list_checkpoints(tmp_path / "b")[0]
    assert ckpt.read_checkpoint(stem, TRAIN_KIND)[1]["step"] == 6


def test_freeze_latents_trains_only_the_synthesis(cache, parser_file, tmp_path):
    """The sharpening phase (resumed with --freeze-latents) must leave the encoder,
    the mapping network and their EMA copies untouched -- every latent computed from
    them (MappingNet's targets, saved inversions) keeps its meaning -- while the
    synthesis network learns."""
    torch.manual_seed(0)
    train_generator_ae(_opts(cache, tmp_path, steps=3, parser=str(parser_file), seg_weight=0.1))
    before = GeneratorAETrainer(_opts(cache, tmp_path / "unused"))
    before.load_state(*ckpt.read_checkpoint(ckpt.list_checkpoints(tmp_path)[0], TRAIN_KIND))
    tr = train_generator_ae(_opts(cache, tmp_path, steps=7, resume=True, freeze_latents=True,
                                  parser=str(parser_file), seg_weight=0.1))
    assert tr.opts.freeze_latents and tr.step == 7 and "adv_G" in tr.stats and "kl" not in tr.stats
    for name in ("E", "E_ema"):
        for (k, p), q in zip(getattr(before, name).state_dict().items(), getattr(tr, name).state_dict().values()):
            assert torch.equal(p, q), f"{name}.{k}"
    for name in ("G", "G_ema"):
        old, new = getattr(before, name), getattr(tr, name)
        for (k, p), q in zip(old.mapping.state_dict().items(), new.mapping.state_dict().values()):
            assert torch.equal(p, q), f"{name}.mapping.{k}"
        changed = [not torch.equal(p, q) for p, q in zip(old.synthesis.parameters(), new.synthesis.parameters())]
        assert sum(changed) > len(changed) // 2, name


@pytest.fixture(scope="module")
def analyzer_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("analyzer") / "analyzer.safetensors"
    torch.manual_seed(3)
    save_module(build_model("analyzer", {"stem": 8, "widths": [8, 16], "hidden": 16, "size": SIZE, "aux_seg": False}), p)
    return p


def test_analyzer_losses_reach_synthesis_and_encoder(cache, analyzer_file, tmp_path):
    """--attr-weight / --coeff-weight: with the frozen analyzer's attribute BCE and
    pose MSE in the loss, reconstructions score better under that analyzer than
    after the same steps without it; the gradient moves the encoder (w must carry
    the attributes) and the analyzer itself is untouched."""

    def run(weight):
        torch.manual_seed(0)
        tr = GeneratorAETrainer(_opts(cache, tmp_path / str(weight), analyzer=str(analyzer_file), attr_weight=weight,
                                      coeff_weight=weight, adv_start=1000, lr=0.01, enc_lr=0.003, batch=12))
        judge = {k: v.clone() for k, v in tr.analyzer.state_dict().items()}
        enc = [p.detach().clone() for p in tr.E.parameters()]
        for _ in range(20):
            s = tr.train_step()
        assert all(torch.equal(v, tr.analyzer.state_dict()[k]) for k, v in judge.items())
        assert any(not torch.equal(p, q) for p, q in zip(enc, tr.E.parameters()))
        b = tr.data.batch(list(range(12)))
        with torch.no_grad():
            x = tr.G.synthesis(tr.G.broadcast(tr.G.mapping(tr.E(b["image"])[0])), noise_mode="const")
            a, c = tr.analyzer(x)
            judged = (torch.nn.functional.binary_cross_entropy_with_logits(a, b["attributes"])
                      + torch.nn.functional.mse_loss(c, b["coeffs"])).item()
        return s, judged

    s_with, with_loss = run(50.0)
    s_without, without_loss = run(1e-9)
    assert s_with["attr"] > 0 and "coeff" in s_with
    assert with_loss < without_loss - 0.01, (with_loss, without_loss)
    with pytest.raises(UserError):
        GeneratorAEOptions(out=str(tmp_path), steps=1, attr_weight=-1.0).validate()


def test_options_validation(cache, tmp_path):
    for bad in ({"steps": None}, {"adv_every": 0}, {"kl_weight": -1.0}, {"enc_widths": [8, 8]}):
        with pytest.raises(UserError):
            kw = dict(bad)
            _opts(cache, tmp_path, **kw).validate()
    with pytest.raises(UserError, match="px"):
        GeneratorAETrainer(_opts(cache, tmp_path, channels=[16, 16, 8, 8], d_channels=[16, 16, 8, 8],
                                 enc_widths=[8, 8, 16]))



def test_class_share_loss_measures_class_sizes_not_pixels():
    """Zero when every class is found as often as the masks hold it (even on the wrong pixels);
    grows when a rare class is drawn too large, and its gradient shrinks that class."""
    from mm2latent.train.generator_ae import class_share_loss

    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[:, :2, :2] = 3  # a small class: 4 of 64 pixels per image
    exact = torch.full((2, 19, 8, 8), -30.0)
    exact.scatter_(1, mask[:, None], 30.0)
    shifted = exact.roll(shifts=3, dims=3)  # the same sizes, other pixels
    assert class_share_loss(exact, mask).item() < 1e-6
    assert class_share_loss(shifted, mask).item() < 1e-6
    big = exact.clone()
    big[:, 3, :4, :4], big[:, 0, :4, :4] = 30.0, -30.0  # class 3 drawn 4x too large
    assert class_share_loss(big, mask).item() > 1.0
    soft = torch.full((2, 19, 8, 8), -30.0)  # only classes 0 and 3 in play, softly: class 3 drawn too often
    soft[:, 0] = 0.0
    soft[:, 3] = -1.0
    soft[:, 3, :4, :4] = 1.0
    soft.requires_grad_(True)
    class_share_loss(soft, mask).backward()
    assert (soft.grad[:, 3] > 0).all()  # descent lowers class 3 everywhere


def test_lower_class_share_temperature_counts_unsure_parts_as_argmax_does():
    """A part the parser is unsure of (p < 0.5 everywhere, so argmax finds none of it) nearly meets its
    share at temperature 1, but at a low temperature the term sees it missing, as the judge does."""
    from mm2latent.train.generator_ae import class_share_loss

    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[:, :2, :2] = 5  # class 5 holds 4 of 64 pixels
    logits = torch.full((1, 19, 8, 8), -30.0)
    logits[:, 0] = 0.0
    logits[:, 5, :4, :4] = -0.4  # on 16 pixels class 5 gets p = 0.40: soft share ~ 6.4 / 64, argmax share 0
    soft, sharp = class_share_loss(logits, mask, temperature=1.0), class_share_loss(logits, mask, temperature=0.1)
    assert soft.item() < 1.0 < sharp.item()


def test_class_share_term_is_trained_and_recorded(cache, parser_file, tmp_path):
    tr = train_generator_ae(_opts(cache, tmp_path / "r", parser=str(parser_file), seg_weight=1.0,
                                  seg_freq_weight=0.5, seg_freq_temperature=0.2, steps=3))
    assert "seg_freq" in tr.stats and tr.stats["seg_freq"] >= 0
    meta = json.loads((tmp_path / "r" / "generator.json").read_text())
    assert meta["training"]["losses"]["seg_freq_weight"] == 0.5
    assert meta["training"]["losses"]["seg_freq_temperature"] == 0.2
    assert "--seg-freq-weight 0.5 --seg-freq-temperature 0.2" in meta["training"]["phases"][-1]
    with pytest.raises(UserError):
        _opts(cache, tmp_path / "x", seg_freq_weight=-1.0).validate()
    with pytest.raises(UserError, match="temperature"):
        _opts(cache, tmp_path / "x", seg_freq_temperature=0.0).validate()

def test_device_choice(cache, tmp_path):
    """--device: auto is the CPU here, cuda without a GPU is one clear error, a bad name is refused."""
    tr = GeneratorAETrainer(_opts(cache, tmp_path / "a", device="auto"))
    assert tr.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert all(p.device.type == tr.device.type for p in tr.G.parameters())
    tr.train_step()
    with pytest.raises(UserError, match="device"):
        GeneratorAETrainer(_opts(cache, tmp_path / "b", device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            GeneratorAETrainer(_opts(cache, tmp_path / "c", device="cuda"))

KILL_WORKER = r"""
import sys, torch
from mm2latent.train.generator_ae import GeneratorAEOptions, train_generator_ae
torch.set_num_threads(1)
out, data, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
torch.manual_seed(0)
train_generator_ae(GeneratorAEOptions(out=out, data=data, batch=4, prior_batch=2, z_dim=16, w_dim=16,
    mapping_layers=2, channels=[16, 16, 8, 8, 8], d_channels=[16, 16, 8, 8, 8], enc_widths=[8, 8, 16, 16],
    adv_start=3, adv_every=1, r1_every=2, parser="", steps=16, ckpt_every=3, ckpt_minutes=1e9,
    sample_every=0, resume=resume))
"""


def test_sigkill_then_resume_is_exact(cache, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "w.py"
    script.write_text(KILL_WORKER)
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(script), str(ref), str(cache), "0"], check=True, env=env, timeout=300)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(run), str(cache), "0"], env=env,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(int(s.name[5:14]) >= 6 for s in ckpt.list_checkpoints(run)) if (run / "checkpoints").exists() else True:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed_at = ckpt.latest_good_checkpoint(run, TRAIN_KIND)[2]["step"]
    assert 6 <= killed_at < 16
    # the newest checkpoint damaged (e.g. killed while writing it): fall back to the previous one
    newest = ckpt.list_checkpoints(run)[0].with_suffix(".safetensors")
    blob = bytearray(newest.read_bytes())
    blob[-50] ^= 0xFF
    newest.write_bytes(bytes(blob))
    p = subprocess.run([sys.executable, str(script), str(run), str(cache), "1"], env=env, timeout=300,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "checksum" in p.stderr and "resuming" in p.stderr
    a = ckpt.read_checkpoint(ckpt.list_checkpoints(ref)[0], TRAIN_KIND)
    b = ckpt.read_checkpoint(ckpt.list_checkpoints(run)[0], TRAIN_KIND)
    assert a[1]["step"] == b[1]["step"] == 16
    assert set(a[0]) == set(b[0])
    for k in a[0]:  # weights, EMA, Adam moments and torch's RNG (NumPy/Python global RNGs are unused, unseeded)
        if k.startswith(("rng.numpy", "rng.python")):
            continue
        assert torch.equal(a[0][k], b[0][k]), k


def test_init_from_exported_weights_with_fresh_discriminator(cache, parser_file, tmp_path):
    """--init: a new run starts from an export (G and G_ema = the exported EMA
    generator, E and E_ema = the exported encoder); with --d-warmup the
    discriminator trains before the generator hears from it; with --seg-balance
    the parser loss weighs small classes more; an export of another architecture
    is refused with one clear error."""
    torch.manual_seed(0)
    train_generator_ae(_opts(cache, tmp_path / "src", steps=3))
    G0 = load_generator(tmp_path / "src" / "generator.safetensors")
    E0 = load_module_file(tmp_path / "src" / "image_encoder.safetensors", "image_encoder")
    tr = GeneratorAETrainer(_opts(cache, tmp_path / "new", init=str(tmp_path / "src"), freeze_latents=True,
                                  adv_start=3, d_warmup=2, parser=str(parser_file), seg_weight=1.0, seg_balance=0.5))
    for name, ref in (("G", G0), ("G_ema", G0), ("E", E0), ("E_ema", E0)):
        for (k, p), q in zip(getattr(tr, name).state_dict().items(), ref.state_dict().values()):
            assert torch.equal(p, q.to(p.dtype)), f"{name}.{k}"
    w = tr.seg_class_weights
    assert w is not None and w.shape == (19,)
    freq = torch.bincount(torch.from_numpy(np.array(tr.data.masks)).reshape(-1).long(), minlength=19).float()
    big, small = int(freq.argmax()), int(torch.where(freq > 0, freq, freq.max() + 1).argmin())
    assert w[small] > 2 * w[big]
    s1 = tr.train_step()  # step 0: before the warm-up window (adv_start - d_warmup = 1)
    s2 = tr.train_step()  # step 1: discriminator only
    assert "loss_D" not in s1 and "loss_D" in s2 and "adv_G" not in s2
    tr.train_step()
    assert "adv_G" in tr.train_step()
    with pytest.raises(UserError, match="does not match"):
        GeneratorAETrainer(_opts(cache, tmp_path / "bad", init=str(tmp_path / "src"), channels=[16, 16, 16, 8, 8]))
    with pytest.raises(UserError, match="no generator"):
        GeneratorAETrainer(_opts(cache, tmp_path / "bad2", init=str(tmp_path / "nothing")))
    with pytest.raises(UserError, match="seg-balance"):
        _opts(cache, tmp_path, seg_balance=2.0).validate()


def _record(run_dir: Path, name: str = "generator") -> dict:
    return json.loads((run_dir / f"{name}.json").read_text())["training"]


def test_init_export_continues_the_history(cache, parser_file, tmp_path):
    """An export of an --init run carries the init's history: cumulative step,
    kimg and minutes, the init's phases plus one for this run (with its command
    line), and the init path; a run without --init records one phase."""
    torch.manual_seed(0)
    train_generator_ae(_opts(cache, tmp_path / "src", steps=3))
    first = _record(tmp_path / "src")
    assert first["step"] == 3 and first["kimg"] == pytest.approx(0.012) and "init" not in first
    assert len(first["phases"]) == 1 and first["phases"][0].startswith("steps 0-3: autoencoder")
    assert "--steps 3" in first["phases"][0] and "--init" not in first["phases"][0]
    src = str(tmp_path / "src")
    train_generator_ae(_opts(cache, tmp_path / "new", steps=2, init=src, freeze_latents=True, adv_start=3,
                             d_warmup=2, parser=str(parser_file), seg_weight=1.0, seg_balance=0.5))
    rec = _record(tmp_path / "new")
    assert rec == _record(tmp_path / "new", "image_encoder")
    assert rec["step"] == 5 and rec["kimg"] == pytest.approx(0.020) and rec["init"] == src
    assert rec["minutes"] >= first["minutes"]
    assert len(rec["phases"]) == 2 and rec["phases"][0] == first["phases"][0]
    last = rec["phases"][1]
    assert last.startswith("steps 3-5: synthesis-only")
    for part in (f"(mm2latent train generator-ae --init {src} ", "--freeze-latents", "--adv-start 3", "--d-warmup 2",
                 "--seg-weight 1.0", "--seg-balance 0.5", "--steps 2"):
        assert part in last, (part, last)
    assert "--attr-weight" not in last and "--adv-weight" not in last
    assert rec["losses"]["seg_balance"] == 0.5 and "synthesis-only" in rec["last_phase"]


def test_resumed_init_run_keeps_the_carried_history(cache, tmp_path):
    """The init's record travels in the checkpoint: resuming an --init run after
    the init directory's generator.json was overwritten (e.g. by an export into it)
    or deleted still exports the history the run started from."""
    torch.manual_seed(0)
    train_generator_ae(_opts(cache, tmp_path / "src", steps=3))
    first = _record(tmp_path / "src")
    src = tmp_path / "src"
    train_generator_ae(_opts(cache, tmp_path / "new", steps=2, init=str(src), adv_weight=0.1))
    meta = ckpt.read_checkpoint(ckpt.list_checkpoints(tmp_path / "new")[0], TRAIN_KIND)[1]
    assert meta["init_training"] == first
    gj = json.loads((src / "generator.json").read_text())
    gj["training"] = dict(gj["training"], step=999, kimg=99.0, phases=["steps 0-999: something else"])
    (src / "generator.json").write_text(json.dumps(gj))
    tr = train_generator_ae(_opts(cache, tmp_path / "new", steps=4, init=str(src), adv_weight=0.1, resume=True))
    assert tr.step == 4 and tr.init_training == first
    (src / "generator.json").unlink()
    train_generator_ae(_opts(cache, tmp_path / "new", steps=5, init=str(src), adv_weight=0.1, resume=True))
    rec = _record(tmp_path / "new")
    assert rec["step"] == 3 + 5 and rec["kimg"] == pytest.approx(0.032) and rec["init"] == str(src)
    assert rec["phases"][0] == first["phases"][0] and len(rec["phases"]) == 2
    assert rec["phases"][1].startswith("steps 3-8: autoencoder") and "--adv-weight 0.1" in rec["phases"][1]


def test_history_of_records_without_phases():
    """An init exported before phases were recorded counts as one phase; a bad record is refused."""
    from mm2latent.train.generator_ae import carried_history

    assert carried_history({}) == (0, 0.0, 0.0, [])
    old = {"step": 40, "kimg": 0.64, "minutes": 2.5, "last_phase": "autoencoder"}
    step, kimg, minutes, phases = carried_history(old)
    assert (step, kimg, minutes) == (40, 0.64, 2.5) and phases == ["steps 0-40: autoencoder"]
    with pytest.raises(UserError, match="phases"):
        carried_history({"step": 1, "phases": "steps 0-1"})


def test_gpu_phase_script_runs_variants_side_by_side(tmp_path):
    """tools/gpu_generator_phase.sh (made for a lent GPU machine) on the CPU with a tiny budget: it renders
    the train split once, trains one run per variant at once from the shipped weights, and leaves each
    run's export, with that variant's flags in its training record, in OUT/vN.tar."""
    import json
    import os
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "src/mm2latent/weights/generator.safetensors").exists():
        pytest.skip("no shipped weights")
    out = tmp_path / "out"
    env = dict(os.environ, PY=sys.executable, DEVICE="cpu", THREADS="1", WORK=str(tmp_path / "work"))
    r = subprocess.run(["bash", "tools/gpu_generator_phase.sh", str(out), "70", "12",
                        "--seg-balance 0 --seg-freq-weight 0.03 --batch 2", "--seg-balance 0 --batch 2"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (out / "env.txt").read_text()
    assert "rendered 12" in log and "training 2 run(s)" in log and "v1 rc=0" in log and "v2 rc=0" in log
    records = []
    for name in ("v1", "v2"):
        with tarfile.open(out / f"{name}.tar") as t:
            assert {"generator.safetensors", "generator.json", "log.jsonl"} <= set(t.getnames())
            records.append(json.load(t.extractfile("generator.json"))["training"])
    assert records[0]["losses"]["seg_freq_weight"] == 0.03 and records[0]["losses"]["seg_balance"] == 0.0
    assert records[1]["losses"].get("seg_freq_weight", 0.0) == 0.0
    shipped = json.loads((root / "src/mm2latent/weights/generator.json").read_text())["training"]["step"]
    assert all(rec["step"] > shipped for rec in records)  # continued from the shipped generator's step


def test_phase_description_names_the_discriminator_state(cache, tmp_path):
    from mm2latent.train.generator_ae import phase_description

    kw = dict(freeze_latents=True, seg_weight=1.0)
    assert phase_description(_opts(cache, tmp_path / "x", init="w", adv_weight=0.0, **kw)).endswith("no discriminator")
    assert "fresh discriminator" in phase_description(_opts(cache, tmp_path / "x", init="w", **kw))


def test_latent_attribute_head_anchor_and_class_boost(cache, parser_file, tmp_path):
    """Autoencoder phase from --init with --latent-attrs/--latent-attr-weight (a linear head on
    w = mapping(mu) learns to read the named attributes, and its gradient reaches the encoder),
    --w-anchor-weight (w stays near the --init weights' w: zero distance at the start, the anchor
    copies never train) and --seg-class-boost (the named classes' parser loss weight is multiplied);
    all of it is checkpointed, so a resumed run matches an uninterrupted one exactly."""
    from mm2latent.common.palette import CLASS_NAMES

    torch.manual_seed(0)
    train_generator_ae(_opts(cache, tmp_path / "src", steps=2))
    kw = dict(init=str(tmp_path / "src"), parser=str(parser_file), seg_weight=1.0,
              seg_class_boost="ear_r=3,neck_l=2", latent_attrs="Wearing_Earrings,Male", latent_attr_weight=1.0,
              w_anchor_weight=1.0, adv_start=100)
    tr = GeneratorAETrainer(_opts(cache, tmp_path / "a", steps=8, **kw))
    w = tr.seg_class_weights
    assert w[CLASS_NAMES.index("ear_r")] == 3.0 and w[CLASS_NAMES.index("neck_l")] == 2.0 and w[0] == 1.0
    anchor0 = {k: v.clone() for k, v in tr.anchor_E.state_dict().items()}
    E0 = {k: v.clone() for k, v in tr.E.state_dict().items()}
    s = tr.train_step()
    assert s["w_anchor"] == pytest.approx(0.0, abs=1e-10)  # E = E_ema = anchor at the start
    head0 = tr.latent_head.weight.detach().clone()
    for _ in range(5):
        s = tr.train_step()
    assert s["w_anchor"] > 0 and "latent_attr" in s
    assert not torch.equal(head0, tr.latent_head.weight) and any(
        not torch.equal(E0[k], v) for k, v in tr.E.state_dict().items())
    assert all(torch.equal(anchor0[k], v) for k, v in tr.anchor_E.state_dict().items())
    # the head reads its attributes: trained alone on fixed w, the BCE falls
    data = tr.data.batch(list(range(len(tr.data))))
    with torch.no_grad():
        wm = tr.G.mapping(tr.E(data["image"])[0])
    target = data["attributes"][:, tr.latent_attr_index]
    bce = lambda: torch.nn.functional.binary_cross_entropy_with_logits(tr.latent_head(wm), target)
    before = bce().item()
    opt = torch.optim.Adam(tr.latent_head.parameters(), 1e-2)
    for _ in range(50):
        opt.zero_grad()
        bce().backward()
        opt.step()
    assert bce().item() < before

    torch.manual_seed(0)
    a = train_generator_ae(_opts(cache, tmp_path / "b", steps=6, **kw))
    torch.manual_seed(0)
    train_generator_ae(_opts(cache, tmp_path / "c", steps=3, **kw))
    torch.manual_seed(9)
    b = train_generator_ae(_opts(cache, tmp_path / "c", steps=6, resume=True, **kw))
    for name in ("G", "E", "latent_head", "anchor_E"):
        for (k, p), q in zip(getattr(a, name).state_dict().items(), getattr(b, name).state_dict().values()):
            assert torch.equal(p, q), f"{name}.{k}"
    with pytest.raises(UserError, match="written without --w-anchor-weight"):  # not switched on mid-run
        train_generator_ae(_opts(cache, tmp_path / "d", steps=2, init=str(tmp_path / "src")))
        train_generator_ae(_opts(cache, tmp_path / "d", steps=4, init=str(tmp_path / "src"), w_anchor_weight=1.0,
                                 resume=True))
    phase = json.loads((tmp_path / "b" / "generator.json").read_text())["training"]["phases"][-1]
    assert "--seg-class-boost ear_r=3,neck_l=2" in phase and "--w-anchor-weight 1.0" in phase

    for bad, msg in (({"seg_class_boost": "earring=2"}, "unknown class"), ({"seg_class_boost": "ear_r=x"}, "CLASS=F"),
                     ({"latent_attrs": "Wearing_Jetpack"}, "unknown attribute"),
                     ({"latent_attr_weight": 0.0}, "go together"), ({"freeze_latents": True}, "freeze-latents"),
                     ({"init": None}, "give --init")):
        with pytest.raises(UserError, match=msg):
            _opts(cache, tmp_path / "x", **{**kw, **bad}).validate()
