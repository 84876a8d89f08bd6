"""``mm2latent assemble`` and pipeline folders with parts missing.

The sources are small random models written in their true file formats (an
e4e checkpoint, a face-parsing.PyTorch BiSeNet state dict, a FaRL release
dict, a rosinality generator; helpers of test_real_loaders / test_official_loaders
/ test_clip) and our own tiny world parts (helpers.build_tiny_weights). The
assembled folder must load with Pipeline.from_pretrained and give the same
outputs as the source models.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from helpers import build_tiny_weights, tiny_clip
from mm2latent.cli.main import main
from mm2latent.common.errors import UserError
from mm2latent.models.bisenet import StoredBiSeNetParser, load_bisenet
from mm2latent.models.e4e import E4EImageEncoder, load_e4e
from mm2latent.models.farl_loader import load_farl
from mm2latent.models.official import load_official
from mm2latent.models.parts import MissingPartError
from mm2latent.models.registry import load_module_file, parse_image, save_module
from mm2latent.pipeline.editing import Pipeline, align_photo
from test_clip import _farl_pth
from test_official_loaders import make_params, nvlabs_modules, to_rosinality, write_nvlabs_pkl  # noqa: F401
from test_real_loaders import (_Evil, _malicious_files, bisenet_table, make_e4e_checkpoint, random_state)

OURS = ("mapping_net", "mask_ae", "sketch_ae", "coeff_ae", "analyzer")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_weights(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    make_e4e_checkpoint(d / "e4e_ffhq_encode.pt", seed=2)  # 32px decoder, 8 ws of 16-d: the tiny world's shape
    torch.save(random_state(bisenet_table(), seed=4), d / "79999_iter.pth")
    torch.manual_seed(5)
    _farl_pth(tiny_clip().eval(), d / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth")
    P = make_params(resolution=32, z_dim=16, w_dim=16, n_map=2, seed=7)
    torch.save({"g_ema": to_rosinality(P), "latent_avg": P["w_avg"]}, d / "550000.pt")
    P16 = make_params(resolution=16, z_dim=16, w_dim=16, n_map=2, seed=8)  # 6 ws: does not fit the e4e encoder
    torch.save({"g_ema": to_rosinality(P16), "latent_avg": P16["w_avg"]}, d / "g16.pt")
    return d


def _assemble(out, *args, **parts) -> int:
    argv = ["assemble", "--out", str(out), *args]
    for k, v in parts.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return main(argv)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mm2latent: error: ") and "\n" not in err, err
    return err


def _images(n, size, seed=3):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _photo(size=48, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def full(tmp_path_factory, tiny, sources):
    out = tmp_path_factory.mktemp("assembled") / "pipe"
    rc = _assemble(out, generator=sources / "e4e_ffhq_encode.pt", encoder=sources / "e4e_ffhq_encode.pt",
                   text_encoder=sources / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth", parser=sources / "79999_iter.pth",
                   **{k: tiny / f"{k}.safetensors" for k in OURS})
    assert rc == 0
    return out


# --------------------------------------------------------------------------- the new formats


def test_e4e_and_bisenet_round_trip_in_our_format(tmp_path, sources):
    enc, _, _ = load_e4e(sources / "e4e_ffhq_encode.pt")
    x = _images(2, 32)
    want = enc.encode(x)
    for half, tol in ((False, 0.0), (True, 5e-2)):
        path = save_module(E4EImageEncoder.from_encoder(enc), tmp_path / f"e4e_{half}.safetensors", half=half)
        got = load_module_file(path, "e4e_encoder").encode(x)
        torch.testing.assert_close(got, want, atol=tol * want.abs().max().item(), rtol=tol)
    parser = load_bisenet(sources / "79999_iter.pth", input_size=None)
    x = _images(1, 64)
    want = parser(x)
    path = save_module(StoredBiSeNetParser.from_parser(parser), tmp_path / "parser.safetensors", half=False)
    loaded = load_module_file(path, "bisenet_parser")
    assert loaded.config.input_size is None and json.loads(path.with_suffix(".json").read_text())["kind"] == "bisenet_parser"
    assert torch.equal(loaded(x), want)


# --------------------------------------------------------------------------- a full folder


def test_assembled_folder_gives_the_source_models_outputs(full, tiny, sources):
    manifest = json.loads((full / "pipeline.json").read_text())
    assert set(manifest["parts"]) == {"generator", "e4e_encoder", "encoder", "parser", *OURS}
    assert manifest["parts"]["parser"]["kind"] == "bisenet_parser" and manifest["missing"] == []
    assert manifest["parts"]["generator"]["source"]["option"] == "--generator"
    # our files are copied as they are (MappingNet's JSON keeps its noise and guidance defaults)
    for k in OURS:
        assert (full / f"{k}.json").read_bytes() == (tiny / f"{k}.json").read_bytes()
        assert (full / f"{k}.safetensors").read_bytes() == (tiny / f"{k}.safetensors").read_bytes()

    pipe = Pipeline.from_pretrained(full)
    assert pipe.info["missing"] == []
    enc, G, _ = load_e4e(sources / "e4e_ffhq_encode.pt")
    x = _images(2, 32)
    assert torch.equal(pipe.e4e_encoder.encode(x), enc.encode(x))
    ws = enc.encode(x)
    assert ws.shape[1] == pipe.G.num_ws == 8
    assert torch.equal(pipe.G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"))
    farl = load_farl(sources / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth")
    texts = ["a smiling woman with blond hair"]
    assert torch.equal(pipe.controls.encoder.encode_text(texts), farl.encode_text(texts))
    bis = load_bisenet(sources / "79999_iter.pth")
    img = _photo()
    assert np.array_equal(pipe.parse(img), parse_image(bis, img))

    inv = pipe.invert(img)  # the e4e encoder, W+ of the generator's layer count
    x_al, _ = align_photo(img, pipe.resolution)
    assert inv.method == "e4e" and inv.ws.shape == (1, 8, 16)
    assert torch.equal(inv.ws, enc.encode(x_al))
    assert pipe.generate(text="a smiling man", seed=1).size == (32, 32)
    assert pipe.edit(inv, text="a smiling man").size == (32, 32)
    with pytest.raises(UserError, match="no image_encoder"):  # 'w' asks for our image encoder, absent here
        pipe.invert(img, inverter="w")


def test_cli_commands_load_the_folder(full, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(_photo()).save(tmp_path / "face.png")
    assert main(["generate", "--weights", str(full), "--text", "a smiling woman", "--out", str(tmp_path / "g.png")]) == 0
    assert main(["parse", str(tmp_path / "face.png"), "--weights", str(full), "--out", str(tmp_path / "m.png")]) == 0
    assert main(["invert", str(tmp_path / "face.png"), "--weights", str(full), "--out", str(tmp_path / "r.png")]) == 0
    assert main(["sample", "--weights", str(full), "--num", "2", "--out", str(tmp_path / "s")]) == 0
    assert all((tmp_path / f).exists() for f in ("g.png", "m.png", "r.png", "s/latents.npy"))


def test_rosinality_and_our_generator_sources(tmp_path, tiny, sources):
    out = tmp_path / "p"
    assert _assemble(out, "--fp16", generator=sources / "550000.pt") == 0
    G = load_official(sources / "550000.pt")
    pipe = Pipeline.from_pretrained(out)
    ws = G.broadcast(G.mapping(torch.randn(2, 16, generator=torch.Generator().manual_seed(0))))
    want = G.synthesis(ws, noise_mode="const")
    torch.testing.assert_close(pipe.G.synthesis(ws, noise_mode="const"), want, atol=0.05, rtol=0.05)
    out2 = tmp_path / "q"
    assert _assemble(out2, generator=out / "generator.safetensors", encoder=tiny / "image_encoder.safetensors") == 0
    pipe2 = Pipeline.from_pretrained(out2)
    assert torch.equal(pipe2.G.synthesis(ws, noise_mode="const"), pipe.G.synthesis(ws, noise_mode="const"))
    assert pipe2.image_encoder is not None and pipe2.e4e_encoder is None


def test_legacy_psp_checkpoint_gives_generator_and_encoder(tmp_path):
    make_e4e_checkpoint(tmp_path / "psp_legacy.pt", kind="psp", legacy=True, seed=6)
    out = tmp_path / "p"
    assert _assemble(out, generator=tmp_path / "psp_legacy.pt", encoder=tmp_path / "psp_legacy.pt") == 0
    enc, G, _ = load_e4e(tmp_path / "psp_legacy.pt")
    pipe = Pipeline.from_pretrained(out)
    x = _images(1, 32)
    ws = enc.encode(x)
    assert torch.equal(pipe.e4e_encoder.encode(x), ws)
    assert torch.equal(pipe.G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"))
    parts = json.loads((out / "pipeline.json").read_text())["parts"]
    assert parts["generator"]["source"]["format"] == "psp checkpoint (decoder)"


def test_nvlabs_pickle_generator(tmp_path, nvlabs_modules):
    P = make_params(resolution=32, z_dim=16, w_dim=16, n_map=2, seed=9)
    write_nvlabs_pkl(tmp_path / "network-snapshot.pkl", P)
    out = tmp_path / "p"
    assert _assemble(out, generator=tmp_path / "network-snapshot.pkl") == 0
    G = load_official(tmp_path / "network-snapshot.pkl")
    ws = G.broadcast(G.mapping(torch.randn(1, 16, generator=torch.Generator().manual_seed(1))))
    pipe = Pipeline.from_pretrained(out)
    assert torch.equal(pipe.G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"))
    assert json.loads((out / "pipeline.json").read_text())["parts"]["generator"]["source"]["format"] == \
        "official StyleGAN2 checkpoint"


# --------------------------------------------------------------------------- parts missing


def test_partial_folder_starts_and_names_what_is_missing(tmp_path, sources, capsys):
    out = tmp_path / "parser_only"
    assert _assemble(out, parser=sources / "79999_iter.pth") == 0
    manifest = json.loads((out / "pipeline.json").read_text())
    assert "mapping_net" in manifest["missing"] and "inverter" in manifest["missing"]
    pipe = Pipeline.from_pretrained(out)
    img = _photo()
    assert pipe.parse(img).shape == (48, 48)  # what the folder has works
    cases = [(lambda: pipe.generate(text="a man"), "MappingNet (mapping_net.safetensors)", "--mapping-net"),
             (lambda: pipe.invert(img), "StyleGAN2 generator (generator.safetensors)", "--generator"),
             (lambda: pipe.attributes(img), "analyzer (analyzer.safetensors)", "--analyzer")]
    for call, part, how in cases:
        with pytest.raises(MissingPartError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("this pipeline has no ") and part in msg and how in msg, msg
    # the CLI: one line, exit status 2
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "face.png")
    assert main(["generate", "--weights", str(out), "--text", "a man", "--out", str(tmp_path / "g.png")]) == 2
    assert "mapping_net.safetensors" in _one_line(capsys)
    assert main(["parse", str(tmp_path / "face.png"), "--weights", str(out), "--out", str(tmp_path / "m.png")]) == 0
    assert main(["attributes", str(tmp_path / "face.png"), "--weights", str(out)]) == 2
    assert "analyzer.safetensors" in _one_line(capsys)
    assert main(["sample", "--weights", str(out), "--out", str(tmp_path / "s")]) == 2
    assert "--generator" in _one_line(capsys)


def test_generation_needs_only_the_encoders_of_the_given_controls(tmp_path, tiny, sources):
    out = tmp_path / "text_only"
    assert _assemble(out, generator=tiny / "generator.safetensors", mapping_net=tiny / "mapping_net.safetensors",
                     text_encoder=tiny / "encoder.safetensors") == 0
    pipe = Pipeline.from_pretrained(out)
    assert pipe.generate(text="a smiling woman", seed=3).size == (32, 32)
    with pytest.raises(MissingPartError, match="mask autoencoder \\(mask_ae.safetensors\\).*--mask-ae"):
        pipe.generate(mask=np.zeros((32, 32), np.uint8))
    with pytest.raises(MissingPartError, match="sketch_ae"):
        pipe.generate(sketch=np.zeros((32, 32), np.uint8))
    with pytest.raises(MissingPartError, match="no image inverter .*--encoder") as e:
        pipe.invert(_photo())
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- refusals


def test_malicious_pickles_are_refused_for_every_option(tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = OrderedDict(a=torch.zeros(2), b=_Evil(marker))
    evil = _malicious_files(tmp_path, marker, {"state_dict": payload, "g_ema": payload})
    for flag in ("generator", "encoder", "text_encoder", "parser", "mapping_net", "analyzer"):
        for path in evil:
            out = tmp_path / f"out_{flag}"
            assert _assemble(out, **{flag: path}) == 2
            msg = _one_line(capsys)
            assert msg.startswith(f"mm2latent: error: --{flag.replace('_', '-')}"), msg
            assert not marker.exists() and not out.exists()
    assert not list(tmp_path.glob(".out_*"))  # no temporary folders left behind


def test_wrong_or_damaged_files_name_the_option(tmp_path, tiny, sources, capsys):
    (tmp_path / "trunc.pt").write_bytes((sources / "e4e_ffhq_encode.pt").read_bytes()[:5000])
    (tmp_path / "mapping_net.json").write_bytes((tiny / "mapping_net.json").read_bytes())
    (tmp_path / "mapping_net.safetensors").write_bytes((tiny / "mapping_net.safetensors").read_bytes()[:300])
    cases = [
        ({"encoder": tmp_path / "trunc.pt"}, "--encoder"),
        ({"mask_ae": tiny / "mapping_net.safetensors"}, "--mask-ae"),
        ({"parser": sources / "e4e_ffhq_encode.pt"}, "--parser"),
        ({"text_encoder": sources / "79999_iter.pth"}, "--text-encoder"),
        ({"generator": tmp_path / "nothing.pt"}, "--generator"),
        ({"mapping_net": sources / "550000.pt"}, "--mapping-net"),
        ({"mapping_net": tmp_path / "mapping_net.safetensors"}, "--mapping-net"),
        ({"generator": sources / "g16.pt", "encoder": sources / "e4e_ffhq_encode.pt"}, "--encoder"),
    ]
    for parts, flag in cases:
        assert _assemble(tmp_path / "o", **parts) == 2
        msg = _one_line(capsys)
        assert flag in msg, msg
        assert not (tmp_path / "o").exists()
    assert main(["assemble", "--out", str(tmp_path / "o")]) == 2
    assert "at least one part" in _one_line(capsys)


def test_out_is_never_destroyed(tmp_path, tiny, sources, capsys):
    out = tmp_path / "p"
    out.mkdir()
    (out / "keep.safetensors").write_bytes(b"old")
    assert _assemble(out, mapping_net=tiny / "mapping_net.safetensors") == 2
    assert "--force" in _one_line(capsys) and (out / "keep.safetensors").read_bytes() == b"old"
    # an error on the way leaves the old folder as it was, even with --force
    assert _assemble(out, "--force", mapping_net=tiny / "mapping_net.safetensors",
                     parser=sources / "550000.pt") == 2
    _one_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["keep.safetensors"]
    assert _assemble(out, "--force", mapping_net=tiny / "mapping_net.safetensors") == 0
    assert sorted(p.name for p in out.iterdir()) == ["mapping_net.json", "mapping_net.safetensors", "pipeline.json"]
    (out / "notes.txt").write_text("mine")
    assert _assemble(out, "--force", mapping_net=tiny / "mapping_net.safetensors") == 2
    assert "not pipeline parts" in _one_line(capsys) and (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert _assemble(tmp_path / "file", mapping_net=tiny / "mapping_net.safetensors") == 2
    _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "p"]  # no temporary folders left


def test_serve_starts_on_a_partial_folder(tmp_path, sources, capsys):
    pytest.importorskip("gradio")
    import socket

    from mm2latent.app.server import serve

    out = tmp_path / "p"
    assert _assemble(out, parser=sources / "79999_iter.pth") == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, url = serve(str(out), port=port, block=False)
    try:
        err = capsys.readouterr().err
        assert "warning: this pipeline has no" in err and "page starts" in err, err
    finally:
        demo.close()
