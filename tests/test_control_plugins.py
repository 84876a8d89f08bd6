"""Controls are plug-ins: a toy "hair colour" control, defined and registered in this file alone,
reaches the CLI, the web page, the reader, the weights registry, MappingNet's training data and
training, MappingNet and the generator, and the editing pipeline; unregistering it restores everything (GitHub issue 40: a new modality
touches at most three files -- here one)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mm2latent.common.errors import UserError
from mm2latent.models.controls import (CONTROLS, Control, WebWidget, read_json_file, register_control,
                                       unregister_control)
from mm2latent.models.mapping import MappingNetConfig

from helpers import S, TINY, tiny_clip, tiny_generator_config

CHANNELS = ("red", "green", "blue")


# --------------------------------------------------------------------------- the plug-in


@dataclass
class HairColourEncoderConfig:
    dim: int = 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False) -> "HairColourEncoderConfig":
        return cls(**d)


class HairColourEncoder(nn.Module):
    """RGB in [0, 1] -> a small embedding; a learned model, saved and loaded like the shipped ones."""

    kind = "hair_colour_encoder"

    def __init__(self, config: HairColourEncoderConfig | None = None):
        super().__init__()
        self.config = config or HairColourEncoderConfig()
        self.lin = nn.Linear(3, self.config.dim)

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(rgb * 2 - 1))


class HairColour(Control):
    """The hair colour as an RGB triple: a swatch image (its mean colour), a JSON file, a dict or 3 numbers."""

    name, noun = "hair_colour", "a hair colour"
    component, component_classes = HairColourEncoder.kind, (HairColourEncoder, HairColourEncoderConfig)
    cli_help = "hair colour: a swatch image (its mean colour) or a JSON [r, g, b] in 0..1"
    widget = WebWidget("sliders", "Hair colour", "use hair colour", elem_id="hair", section="Hair colour",
                       hint="pick a hair colour", options={"sliders": tuple((c, 0.0, 1.0) for c in CHANNELS)})

    def read(self, value, encoders):
        from mm2latent.common.imageio import load_image

        if isinstance(value, (str, os.PathLike)):
            value = (read_json_file(value, "hair colour file") if str(value).endswith(".json")
                     else load_image(value).reshape(-1, 3).mean(0) / 255.0)
        if isinstance(value, dict):
            value = [value.get(c, 0.5) for c in CHANNELS]
        try:
            a = np.asarray(value, np.float64).reshape(-1)
        except (TypeError, ValueError):
            a = np.zeros(0)
        if a.shape != (3,) or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise UserError("a hair colour is 3 numbers in [0, 1] (red, green, blue)")
        return torch.tensor(a, dtype=torch.float32)[None]

    def embed(self, encoders, batch):
        return encoders.part(self.component).encode(batch)

    def training_embedding(self, encoders, images, derived):
        """Read off a face: the mean colour of the pixels the parser calls hair (of the whole image
        where it finds none)."""
        hair = (derived["mask"] == 13).float()[:, None]
        hair = torch.nn.functional.interpolate(hair, size=images.shape[-2:], mode="nearest")
        rgb = (images.clamp(-1, 1) + 1) / 2
        mean = (rgb * hair).sum((2, 3)) / hair.sum((2, 3)).clamp(min=1)
        return self.embed(encoders, torch.where(hair.sum((2, 3)) > 0, mean, rgb.mean((2, 3))))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def registered():
    before = dict(CONTROLS)
    register_control(HairColour)
    yield CONTROLS["hair_colour"]
    unregister_control("hair_colour")
    assert CONTROLS == before


@pytest.fixture(scope="module")
def weights(registered, tmp_path_factory) -> Path:
    """Tiny random models, the toy's encoder beside them, and a MappingNet that takes the toy."""
    from mm2latent.models.clip import save_clip
    from mm2latent.models.inversion import ImageEncoder, ImageEncoderConfig
    from mm2latent.models.mapping import MappingNet
    from mm2latent.models.registry import build_model, save_module
    from mm2latent.models.stylegan2 import Generator, save_generator

    d = tmp_path_factory.mktemp("plugin_weights")
    torch.manual_seed(0)
    for kind, cfg in TINY.items():
        save_module(build_model(kind, cfg), d / f"{kind}.safetensors")
    save_clip(tiny_clip().eval(), d / "encoder.safetensors")
    save_generator(d / "generator", Generator(tiny_generator_config()))
    save_module(ImageEncoder(ImageEncoderConfig(size=S, z_dim=16, widths=[8, 16, 16])), d / "image_encoder.safetensors")
    save_module(HairColourEncoder(), d / "hair_colour_encoder.safetensors")
    net = MappingNet(MappingNetConfig(dims={"text": 32, "mask": 32, "sketch": 32, "coeffs": 32, "hair_colour": 8},
                                      w_dim=16, hidden=32, layers=2))
    save_module(net, d / "mapping_net.safetensors")
    return d


@pytest.fixture(scope="module")
def pipe(weights):
    from mm2latent.pipeline import Pipeline

    return Pipeline.from_pretrained(weights)


def _swatch(path: Path, rgb) -> Path:
    Image.fromarray(np.full((16, 16, 3), rgb, np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- tests


def test_the_toy_is_read_from_files_and_values(registered, pipe, tmp_path):
    c = pipe.controls
    png = registered.read(_swatch(tmp_path / "blond.png", (230, 200, 51)), c)
    assert torch.allclose(png, torch.tensor([[230, 200, 51]]) / 255.0)
    (tmp_path / "blond.json").write_text("[0.90196, 0.78431, 0.2]")
    assert torch.allclose(registered.read(tmp_path / "blond.json", c), png, atol=1e-4)
    assert torch.equal(registered.read({"red": 0.9, "green": 0.5, "blue": 0.2}, c), registered.read([0.9, 0.5, 0.2], c))
    for bad in ([1, 2], [0.5, 0.5, 7.0], "nope.json", {"red": "x"}):
        with pytest.raises(UserError) as e:
            registered.read(bad, c)
        assert "\n" not in str(e.value)
    # its own encoder came from the weights directory, through the model registry
    assert isinstance(c.part("hair_colour_encoder"), HairColourEncoder)


def test_the_toy_reaches_mappingnet_and_the_generator(pipe):
    assert pipe.mapping.modalities == ("text", "mask", "sketch", "coeffs", "hair_colour")
    emb = pipe.embed(hair_colour=[0.9, 0.8, 0.2])
    assert torch.allclose(emb["hair_colour"], pipe.controls.part("hair_colour_encoder").encode(
        torch.tensor([[0.9, 0.8, 0.2]])))
    assert all(emb[m] is None for m in ("text", "mask", "sketch", "coeffs"))
    blond = np.asarray(pipe(hair_colour=[0.9, 0.8, 0.2], seed=1))
    assert blond.shape == (S, S, 3)
    assert np.array_equal(blond, np.asarray(pipe.generate(hair_colour={"red": 0.9, "green": 0.8, "blue": 0.2}, seed=1)))
    assert not np.array_equal(blond, np.asarray(pipe(hair_colour=[0.1, 0.1, 0.1], seed=1)))
    with_text = np.asarray(pipe(text="a woman", hair_colour=[0.9, 0.8, 0.2], seed=1))
    assert not np.array_equal(with_text, np.asarray(pipe(text="a woman", seed=1)))
    # a colour does not state the layout: text guidance still reaches every layer
    assert not CONTROLS["hair_colour"].states_layout
    with pytest.raises(UserError, match="unknown control 'eye_colour'"):
        pipe(eye_colour=[0, 0, 1])


def test_mappingnet_trains_on_the_toy(weights, tmp_path):
    """MappingNet's training data gets the toy's embeddings (read off the generated faces), and a
    MappingNet trained on text + mask + the toy generates from it."""
    from mm2latent.pipeline import Pipeline
    from mm2latent.train.mapping import MappingTrainOptions, train_mapping
    from mm2latent.train.mapping_data import generate_mapping_data, load_mapping_data

    data = generate_mapping_data(tmp_path / "data", num=24, weights=str(weights), chunk=12, seed=1)
    arrays = load_mapping_data(data)
    assert arrays["hair_colour_emb"].shape == (24, 8) and arrays["mask_emb"].shape[0] == 24
    assert len(np.unique(arrays["hair_colour_emb"].round(3), axis=0)) > 1  # read off each face
    out = tmp_path / "w"
    out.mkdir()
    for f in weights.iterdir():
        if f.name != "mapping_net.safetensors" and f.name != "mapping_net.json":
            (out / f.name).symlink_to(f)
    train_mapping(MappingTrainOptions(data=str(data), out=str(tmp_path / "run"), steps=4, batch=8, hidden=16,
                                      layers=2, val_fraction=0.2, modalities=["text", "mask", "hair_colour"]),
                  export_to=str(out / "mapping_net.safetensors"))
    pipe = Pipeline.from_pretrained(out)
    assert pipe.mapping.modalities == ("text", "mask", "hair_colour")
    a = np.asarray(pipe(hair_colour=[0.9, 0.8, 0.2], seed=2))
    assert not np.array_equal(a, np.asarray(pipe(hair_colour=[0.1, 0.1, 0.1], seed=2)))


def test_the_toy_edits_a_photo(pipe):
    photo = np.random.default_rng(0).integers(0, 255, (S, S, 3), dtype=np.uint8)
    inv = pipe.invert(photo)
    # a photo does not state a hair colour: absent on both sides of the delta, so strength 0 is no change
    rec = np.asarray(pipe.edit(inv, hair_colour=[0.9, 0.8, 0.2], strength=0.0))
    assert np.array_equal(rec, np.asarray(pipe.reconstruct(photo)))
    assert not np.array_equal(rec, np.asarray(pipe.edit(inv, hair_colour=[0.9, 0.8, 0.2])))
    with pytest.raises(UserError, match="a hair colour"):
        pipe.edit(inv)


def test_the_toy_is_a_cli_option(registered, weights, tmp_path, capsys):
    from mm2latent.cli.main import build_parser, main

    parser = build_parser()
    a = parser.parse_args(["generate", "--hair-colour", "c.png", "--out", "o.png"])
    assert a.hair_colour == "c.png" and a.text is None
    for command in ("generate", "edit"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert " ".join(capsys.readouterr().out.split()).count("--hair-colour HAIR_COLOUR hair colour: a swatch image") == 1
    out = tmp_path / "face.png"
    swatch = _swatch(tmp_path / "c.png", (230, 200, 51))
    assert main(["generate", "--hair-colour", str(swatch), "--seed", "1", "--weights", str(weights),
                 "--out", str(out)]) == 0
    assert Image.open(out).size == (S, S)
    capsys.readouterr()
    assert main(["generate", "--out", str(out)]) == 2
    assert "--hair-colour" in capsys.readouterr().err
    assert main(["generate", "--hair-colour", str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mm2latent: error:") and "\n" not in err


def test_the_toy_is_a_web_widget(registered, pipe, tmp_path):
    pytest.importorskip("gradio")
    from mm2latent.app.server import App, build_ui

    app = App(pipe, out_dir=tmp_path)
    demo, _ = build_ui(app)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"use-hair-colour", "hair-red", "hair-green", "hair-blue", "edit-use-hair-colour", "edit-hair-red"} <= ids
    fns = {f.api_name: f for f in (demo.fns.values() if isinstance(demo.fns, dict) else demo.fns)}
    assert "hair-blue" == fns["generate"].inputs[-1].elem_id
    img, _, status, _ = app.generate({"hair_colour": (True, {"red": 0.9, "green": 0.8, "blue": 0.2})}, 1, 1.0)
    assert status.startswith("generated from hair_colour")
    assert np.array_equal(np.asarray(img), np.asarray(pipe(hair_colour=[0.9, 0.8, 0.2], seed=1)))
    with pytest.raises(UserError, match="pick a hair colour"):
        app.generate({"hair_colour": (False, {"red": 0.9, "green": 0.8, "blue": 0.2})}, 1, 1.0)


def test_registering_checks_names_and_unregistering_restores(registered):
    from mm2latent.cli.main import build_parser

    with pytest.raises(ValueError, match="registered already"):
        register_control(HairColour)
    for name in ("seed", "hair colour"):
        bad = type("Bad", (HairColour,), {"name": name})
        with pytest.raises(ValueError, match="identifier"):
            register_control(bad)
    assert MappingNetConfig(dims={"hair_colour": 3, "text": 4}).dims == {"text": 4, "hair_colour": 3}
    removed = unregister_control("hair_colour")
    try:
        assert list(CONTROLS) == ["text", "mask", "sketch", "coeffs"]
        with pytest.raises(UserError, match="subset"):
            MappingNetConfig(dims={"hair_colour": 3})
        with pytest.raises(SystemExit):
            build_parser().parse_args(["generate", "--hair-colour", "c.png", "--out", "o.png"])
    finally:
        register_control(removed)
