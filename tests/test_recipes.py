"""Recipes as files: every trainer reads configs/*.toml into its options dataclass, and its
command-line options are generated from that dataclass (mm2latent.train.recipe,
mm2latent.cli.recipe_options)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mm2latent.cli.main import build_parser, main
from mm2latent.common.errors import UserError
from mm2latent.train.recipe import build_options, field_docs

ROOT = Path(__file__).resolve().parents[1]
#: train verb -> its recipe file in configs/
RECIPES = {"generator": "generator_world", "generator-ae": "generator_ae", "stylegan2": "stylegan2", "clip": "clip",
           "parser": "parser", "analyzer": "analyzer", "mask-ae": "mask_ae", "sketch-ae": "sketch_ae",
           "coeff-ae": "coeff_ae", "mapping": "mapping_net", "inverter": "wplus_inverter",
           "latent-prior": "latent_prior"}


@dataclass
class Toy:
    """A toy trainer's options."""

    out: str  # run directory
    lr: float = 0.1  # peak learning rate
    #: a block comment above a field
    #: spans lines
    widths: list[int] = field(default_factory=lambda: [4, 8])
    tag: str | None = None
    model: dict = field(default_factory=dict)
    compile: bool = False


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_field_docs_read_trailing_and_block_comments():
    docs = field_docs(Toy)
    assert docs["out"] == "run directory" and docs["lr"] == "peak learning rate"
    assert docs["widths"] == "a block comment above a field spans lines"
    assert docs.get("tag", "") == ""


def test_defaults_then_file_then_command_line(tmp_path):
    f = _write(tmp_path / "r.toml", 'out = "runs/a"\n[schedule]\nlr = 1\n[model]\nbase = 4\n')
    o = build_options(Toy, f)
    assert o == Toy(out="runs/a", lr=1.0, model={"base": 4})  # a table named after a dict field is its value
    assert isinstance(o.lr, float)  # TOML's 1 widened to the field's float
    o = build_options(Toy, f, {"lr": 0.5, "widths": [2]})
    assert o.lr == 0.5 and o.widths == [2] and o.out == "runs/a"


@pytest.mark.parametrize("text, message", [
    ('out = "a"\nlrr = 1\n', "unknown keys lrr"),
    ('out = "a"\nlr = "fast"\n', "lr = 'fast' is not a float"),
    ('out = "a"\nwidths = [1, "b"]\n', "is not a int"),
    ('out = "a"\n[x]\nlr = 1\n[y]\nlr = 2\n', "lr is set twice"),
    ('lr = 1\n', "missing --out"),
    ('out = [\n', "not valid TOML"),
])
def test_bad_recipes_are_one_clear_error(tmp_path, text, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_options(Toy, _write(tmp_path / "r.toml", text))


def test_a_command_fixed_field_refuses_a_recipe_that_disagrees(tmp_path):
    f = _write(tmp_path / "r.toml", 'out = "a"\ntag = "parser"\n')
    assert build_options(Toy, f, tag="parser").tag == "parser"
    with pytest.raises(UserError, match="this command trains tag = 'mask_ae'"):
        build_options(Toy, f, tag="mask_ae")


@pytest.mark.parametrize("verb", sorted(RECIPES))
def test_every_shipped_recipe_loads_and_every_field_is_an_option(verb, capsys):
    """Each trainer reads its recipe file, and --help lists one option per dataclass field."""
    args = build_parser().parse_args(["train", verb, "--recipe", f"configs/{RECIPES[verb]}.toml", "--out", "/tmp/r.safetensors"])
    opts = args.build_options(args)
    if hasattr(opts, "validate"):
        opts.validate()
    with pytest.raises(SystemExit):
        main(["train", verb, "--help"])
    text = capsys.readouterr().out
    from mm2latent.cli.train import PERCEPTION_ONLY, PERCEPTION_VERBS

    skip = set()
    if verb in PERCEPTION_VERBS:  # the task is the command's; task-only options only where they apply
        skip = {"task"} | {k for k, tasks in PERCEPTION_ONLY.items() if PERCEPTION_VERBS[verb][0] not in tasks}
    for f in dataclasses.fields(opts):
        if f.name not in skip:
            assert "--" + f.name.replace("_", "-") in text, f.name


def test_command_line_overrides_the_recipe_with_typed_values():
    p = build_parser()
    args = p.parse_args(["train", "generator-ae", "--recipe", "configs/generator_ae.toml", "--out", "r",
                         "--lr", "0.01", "--channels", "64,64,32,16,8,8", "--freeze-latents", "--analyzer", "none",
                         "--seg-class-boost", "ear_r=2"])
    o = args.build_options(args)
    assert o.lr == 0.01 and o.channels == [64, 64, 32, 16, 8, 8] and o.freeze_latents is True
    assert o.analyzer is None and o.seg_class_boost == "ear_r=2"
    assert o.w_anchor_weight == 10.0 and o.init == "src/mm2latent/weights"  # the rest from the file
    args = p.parse_args(["train", "parser", "--recipe", "configs/parser.toml", "--out", "r", "--no-augment",
                         "--model", '{"base": 4}'])
    o = args.build_options(args)
    assert o.task == "parser" and o.augment is False and o.model == {"base": 4} and o.steps == 8706
    args = p.parse_args(["train", "clip", "--data", "d", "--out", "r", "--config", '{"vision_patch_size": 8}'])
    assert args.build_options(args).config == {"vision_patch_size": 8}


def test_bad_option_values_are_one_line(capsys):
    for argv in (["train", "mapping", "--out", "r", "--lr", "fast"],
                 ["train", "parser", "--out", "r", "--model", "[1]"],
                 ["train", "stylegan2", "--out", "r", "--channels", "8,x"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("mm2latent: error: argument") and err.count("\n") == 1, err
    assert main(["train", "mapping", "--out", "r"]) == 2  # data neither given nor in a recipe
    assert "missing --data" in capsys.readouterr().err


def test_a_perception_recipe_of_another_task_is_refused(tmp_path, capsys):
    assert main(["train", "mask-ae", "--recipe", str(_write(tmp_path / "r.toml", 'task = "parser"\n')),
                 "--data", "d", "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "this command trains task = 'mask_ae'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.mark.parametrize("task", ["parser", "analyzer", "mask_ae", "sketch_ae", "coeff_ae"])
def test_perception_recipes_build_the_shipped_architectures(task):
    """configs/<task>.toml describes the shipped model: the network it builds has exactly the
    tensors (names and shapes) of the shipped weights."""
    from mm2latent.models.registry import build_model, default_weights_dir
    from mm2latent.train.perception import PerceptionTrainOptions

    shipped = default_weights_dir() / f"{task}.safetensors"
    if not shipped.exists():
        pytest.skip("no shipped weights")
    opts = build_options(PerceptionTrainOptions, ROOT / f"configs/{task}.toml", task=task, out="r")
    model = build_model(task, opts.model)
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert mine == _shapes(shipped)


def test_generator_ae_and_clip_recipes_match_the_shipped_configs():
    from mm2latent.models.registry import default_weights_dir
    from mm2latent.train.clip import CLIPTrainOptions
    from mm2latent.train.generator_ae import GeneratorAEOptions

    weights = default_weights_dir()
    if not (weights / "generator.json").exists():
        pytest.skip("no shipped weights")
    g = build_options(GeneratorAEOptions, ROOT / "configs/generator_ae.toml", out="r")
    shipped = json.loads((weights / "generator.json").read_text())["config"]
    cfg = dataclasses.asdict(g.model_config())
    for key in ("z_dim", "w_dim", "mapping_layers", "resolution"):
        assert cfg[key] == shipped[key], key
    assert {int(k): v for k, v in cfg["channels"].items()} == {int(k): v for k, v in shipped["channels"].items()}
    losses = json.loads((weights / "generator.json").read_text())["training"]["losses"]
    for key, value in losses.items():
        if key in ("image_share_weight", "sample_share_weight"):  # unshipped terms, since removed
            assert value == 0.0
            continue
        assert getattr(g, key) == value, key  # the last phase's losses
    c = build_options(CLIPTrainOptions, ROOT / "configs/clip.toml", out="r")
    assert c.config == "world_small" and c.steps == json.loads((weights / "encoder.json").read_text())["meta"]["trained_steps"]
