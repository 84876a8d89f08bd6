"""Bad inputs across the CLI and Python API, determinism across processes, untrusted checkpoints.

Every kind of bad input must give one clear line and exit status 2 (CLI) or a
UserError (API), leave no partial output behind and keep existing files as
they were. The suite prints how many kinds it tried and how many passed.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import build_tiny_weights
from mm2latent.cli.main import main


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return build_tiny_weights(tmp_path_factory.mktemp("hw"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(good).save(d / "good.png")
    (d / "empty.png").write_bytes(b"")
    (d / "truncated.png").write_bytes((d / "good.png").read_bytes()[:60])
    Image.fromarray(good).save(d / "good.jpg")
    (d / "truncated.jpg").write_bytes((d / "good.jpg").read_bytes()[:200])
    (d / "text.png").write_text("this is not an image")
    Image.fromarray(good[:1, :1]).save(d / "one_pixel.png")
    Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)).save(d / "sixteen_bit.png")
    Image.fromarray(good).convert("P").save(d / "palette.png")
    Image.fromarray(good).convert("CMYK").save(d / "cmyk.jpg")
    # decompression bomb: a tiny PNG that claims 20000 x 20000 pixels
    Image.new("1", (20000, 20000)).save(d / "bomb.png")
    m = np.zeros((32, 32, 3), np.uint8)
    m[4:10, 4:30] = (1, 2, 3)  # a colour that is not in the palette, on many pixels
    Image.fromarray(m).save(d / "foreign_colours.png")
    Image.fromarray(np.full((32, 32), 40, np.uint8)).save(d / "index_out_of_range.png")
    (d / "nan.json").write_text('{"yaw": NaN}')
    (d / "inf.json").write_text('{"smile": Infinity}')
    (d / "shape.json").write_text("[1, 2, 3]")
    (d / "notjson.json").write_text("{yaw: 3")
    os.mkdir(d / "a_directory")
    ro = d / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    return d


def _cases(d: Path, w: Path):
    W = ["--weights", str(w)]
    gen = ["generate", "--text", "a man", *W]
    return {
        "missing file": ["edit", str(d / "nope.png"), "--text", "x", "--out", str(d / "o1.png"), *W],
        "directory instead of file": ["invert", str(d / "a_directory"), "--out", str(d / "o2.png"), *W],
        "zero-byte PNG": ["invert", str(d / "empty.png"), "--out", str(d / "o3.png"), *W],
        "truncated PNG": ["invert", str(d / "truncated.png"), "--out", str(d / "o4.png"), *W],
        "truncated JPEG": ["invert", str(d / "truncated.jpg"), "--out", str(d / "o5.png"), *W],
        "non-image with image extension": ["invert", str(d / "text.png"), "--out", str(d / "o6.png"), *W],
        "decompression bomb": ["invert", str(d / "bomb.png"), "--out", str(d / "o7.png"), *W],
        "1x1 image": ["invert", str(d / "one_pixel.png"), "--out", str(d / "o8.png"), *W],
        "mask with foreign colours": [*gen, "--mask", str(d / "foreign_colours.png"), "--out", str(d / "o9.png")],
        "mask index out of range": [*gen, "--mask", str(d / "index_out_of_range.png"), "--out", str(d / "o10.png")],
        "empty text": ["generate", "--text", "", *W, "--out", str(d / "o11.png")],
        "whitespace text": ["generate", "--text", "   \t ", *W, "--out", str(d / "o12.png")],
        "NaN coefficients": [*gen, "--coeffs", str(d / "nan.json"), "--out", str(d / "o13.png")],
        "inf coefficients": [*gen, "--coeffs", str(d / "inf.json"), "--out", str(d / "o14.png")],
        "wrong-shape coefficients": [*gen, "--coeffs", str(d / "shape.json"), "--out", str(d / "o15.png")],
        "coefficients not JSON": [*gen, "--coeffs", str(d / "notjson.json"), "--out", str(d / "o16.png")],
        "no modality": ["generate", *W, "--out", str(d / "o17.png")],
        "output in a missing directory": [*gen, "--out", str(d / "no" / "such" / "dir" / "o.png")],
        # root ignores permission bits: use a directory no one can create files in
        "output in a read-only directory": [*gen, "--out", ("/proc/self/o.png" if os.geteuid() == 0
                                                            else str(d / "readonly" / "o.png"))],
        "output overwrites the input": ["edit", str(d / "good.png"), "--text", "x", "--out", str(d / "good.png"), *W],
        "weights of another model": ["generate", "--text", "x", "--weights", str(d / "wrong_weights"),
                                     "--out", str(d / "o18.png")],
        "truncated safetensors": ["generate", "--text", "x", "--weights", str(d / "torn_weights"),
                                  "--out", str(d / "o19.png")],
        "absurd safetensors header": ["generate", "--text", "x", "--weights", str(d / "absurd_weights"),
                                      "--out", str(d / "o20.png")],
        "missing weights directory": ["generate", "--text", "x", "--weights", str(d / "nowhere"),
                                      "--out", str(d / "o21.png")],
    }


def _broken_weights(d: Path, w: Path) -> None:
    import shutil

    for name in ("wrong_weights", "torn_weights", "absurd_weights"):
        shutil.copytree(w, d / name, dirs_exist_ok=True)
    # generator file replaced by the parser's (another architecture, right file name)
    shutil.copy(w / "parser.safetensors", d / "wrong_weights" / "generator.safetensors")
    shutil.copy(w / "parser.json", d / "wrong_weights" / "generator.json")
    g = (d / "torn_weights" / "generator.safetensors")
    g.write_bytes(g.read_bytes()[: len(g.read_bytes()) // 2])
    a = d / "absurd_weights" / "generator.safetensors"
    a.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")


def test_bad_inputs_give_one_clear_line(weights, files, capsys):
    _broken_weights(files, weights)
    before = {p: p.read_bytes() for p in files.iterdir() if p.is_file()}
    cases = _cases(files, weights)
    passed, failures = 0, []
    for kind, argv in cases.items():
        rc = main(argv)
        cap = capsys.readouterr()
        err = cap.err.strip()
        out_path = Path(argv[argv.index("--out") + 1])
        ok = (rc == 2 and err.startswith("mm2latent: error:") and "\n" not in err and "Traceback" not in cap.err
              and (not out_path.exists() or out_path in before))
        passed += ok
        if not ok:
            failures.append(f"{kind}: rc={rc} err={err[:200]!r}")
    # existing files untouched, no partial outputs left (no *.tmp / .partial files)
    for p, data in before.items():
        assert p.read_bytes() == data, p
    assert not [p for p in files.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")]
    print(f"\nbad-input kinds tried: {len(cases)}, passed: {passed}")
    assert not failures, failures
    assert len(cases) >= 15


def test_odd_but_valid_images_work(weights, files, tmp_path, capsys):
    """16-bit, palette, CMYK and tiny-but-legal photos are converted, not refused."""
    for name in ("sixteen_bit.png", "palette.png", "cmyk.jpg", "good.jpg"):
        out = tmp_path / f"{name}.out.png"
        assert main(["invert", str(files / name), "--out", str(out), "--weights", str(weights)]) == 0, name
        assert Image.open(out).mode == "RGB"
    long_text = "a smiling woman with blond hair " * 40  # longer than CLIP's 77-token context: truncated
    assert main(["generate", "--text", long_text, "--weights", str(weights), "--out", str(tmp_path / "l.png")]) == 0
    assert main(["generate", "--text", "😀 улыбка 笑顔", "--weights", str(weights), "--out", str(tmp_path / "e.png")]) == 0
    capsys.readouterr()


def test_same_seed_same_png_across_processes(weights, tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"p{k}.png"
        env = dict(os.environ, OMP_NUM_THREADS="1", MM2LATENT_NO_PROGRESS="1")
        r = subprocess.run([sys.executable, "-m", "mm2latent.cli.main", "generate", "--text", "a man with a beard",
                            "--seed", "7", "--weights", str(weights), "--out", str(out)], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_malicious_pickle_never_runs(tmp_path):
    from mm2latent.common.errors import UserError
    from mm2latent.models.official import load_official

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for suffix in (".pkl", ".pt"):
        f = tmp_path / f"evil{suffix}"
        f.write_bytes(pickle.dumps({"G_ema": Evil()}))
        with pytest.raises(UserError):
            load_official(f)
    assert not marker.exists()
