"""Shared helpers: palette conversions, image validation, atomic checkpoints, CLI errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm2latent.common.checkpoint import load_checkpoint, save_checkpoint
from mm2latent.common.errors import UserError
from mm2latent.common.imageio import load_image, save_image
from mm2latent.common.palette import (NUM_CLASSES, PALETTE, color_to_index, index_to_color, index_to_onehot,
                                      load_mask, onehot_to_index, save_mask)

from helpers import REAL_SKIP_REASON, real_samples_dir  # noqa: E402

REAL = real_samples_dir()


def test_palette_roundtrip():
    rng = np.random.default_rng(0)
    m = rng.integers(0, NUM_CLASSES, (32, 40)).astype(np.uint8)
    assert (color_to_index(index_to_color(m)) == m).all()
    oh = index_to_onehot(m)
    assert oh.shape == (NUM_CLASSES, 32, 40) and torch.all(oh.sum(0) == 1)
    assert (onehot_to_index(oh) == m).all()
    assert len({tuple(c) for c in PALETTE.tolist()}) == NUM_CLASSES


def test_mask_files_index_and_colour(tmp_path):
    m = (np.arange(64 * 64).reshape(64, 64) % NUM_CLASSES).astype(np.uint8)
    save_mask(tmp_path / "i.png", m)
    save_mask(tmp_path / "c.png", m, color=True)
    assert (load_mask(tmp_path / "i.png") == m).all()
    assert (load_mask(tmp_path / "c.png") == m).all()
    assert load_mask(tmp_path / "c.png", size=32).shape == (32, 32)


def test_mask_foreign_colours_and_range(tmp_path):
    Image.fromarray(np.full((32, 32, 3), (10, 200, 90), np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(UserError, match="outside the CelebAMask-HQ palette"):
        load_mask(tmp_path / "bad.png")
    Image.fromarray(np.full((32, 32), 40, np.uint8)).save(tmp_path / "range.png")
    with pytest.raises(UserError):
        load_mask(tmp_path / "range.png")


@pytest.mark.skipif(not REAL.is_dir(), reason=REAL_SKIP_REASON)
def test_real_masks_load_and_hair_is_13():
    m = load_mask(REAL / "masks-index" / "0.png")
    assert m.shape == (512, 512) and m.max() <= 18
    # hair covers the top of the frame in sample 0; skin the centre
    assert np.bincount(m[:60].ravel(), minlength=19).argmax() in (0, 13)
    assert (m[:150] == 13).mean() > 0.2
    for f in sorted((REAL / "masks-color").glob("*.png")):
        c = load_mask(f)
        assert c.max() <= 18


def test_image_validation(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(UserError, match="directory"):
        load_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(UserError, match="not a readable image"):
        load_image(tmp_path / "text.jpg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError):
        load_image(tmp_path / "trunc.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(UserError, match="too small"):
        load_image(tmp_path / "tiny.png")


def test_image_modes_become_rgb(tmp_path):
    a16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    Image.new("CMYK", (32, 32), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("P", (32, 32)).save(tmp_path / "pal.png")
    Image.new("RGBA", (32, 32), (255, 0, 0, 128)).save(tmp_path / "rgba.png")
    for f in ("g16.png", "cmyk.jpg", "pal.png", "rgba.png"):
        im = load_image(tmp_path / f)
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
    assert load_image(tmp_path / "g16.png").max() > 200  # 16-bit range scaled, not clipped


def test_save_image_atomic_and_bad_suffix(tmp_path):
    save_image(tmp_path / "a.png", np.zeros((16, 16, 3), np.uint8))
    before = (tmp_path / "a.png").read_bytes()
    with pytest.raises(UserError, match="extension"):
        save_image(tmp_path / "a.gifx", np.zeros((16, 16, 3), np.uint8))
    assert (tmp_path / "a.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_checkpoint_roundtrip_kind_and_corruption(tmp_path):
    t = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    save_checkpoint(tmp_path / "m", t, {"kind": "toy", "width": 4})
    tensors, cfg = load_checkpoint(tmp_path / "m.safetensors", expect_kind="toy")
    assert torch.equal(tensors["w"], t["w"]) and cfg["width"] == 4
    with pytest.raises(UserError, match="expected 'other'"):
        load_checkpoint(tmp_path / "m", expect_kind="other")
    raw = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "bad.safetensors").write_bytes((10**12).to_bytes(8, "little") + raw[8:])
    (tmp_path / "bad.json").write_text(json.dumps({"kind": "toy"}))
    with pytest.raises(UserError, match="invalid header"):
        load_checkpoint(tmp_path / "bad")
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "trunc.json").write_text(json.dumps({"kind": "toy"}))
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "trunc")


def test_cli_version_and_unknown_command():
    r = subprocess.run([sys.executable, "-m", "mm2latent.cli.main", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip()
    r = subprocess.run([sys.executable, "-m", "mm2latent.cli.main", "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr



def test_checkpoint_names_with_dots(tmp_path):
    import torch

    from mm2latent.common.checkpoint import load_checkpoint, save_checkpoint

    st = save_checkpoint(tmp_path / "noise=0.0540", {"a": torch.ones(2)}, {"kind": "x"})
    assert st.name == "noise=0.0540.safetensors" and (tmp_path / "noise=0.0540.json").exists()
    st2 = save_checkpoint(tmp_path / "model.v2.safetensors", {"a": torch.zeros(2)}, {"kind": "x"})
    assert st2.name == "model.v2.safetensors"
    assert load_checkpoint(tmp_path / "noise=0.0540")[0]["a"].sum() == 2
    assert load_checkpoint(tmp_path / "model.v2.safetensors")[0]["a"].sum() == 0


def test_emit_json_report_prints_and_writes(tmp_path, capsys):
    import json

    from mm2latent.common.fileio import emit_json_report

    table = {"rows": {"a": {"miou": 0.5}}, "num": 3}
    emit_json_report(table, tmp_path / "r.json")
    assert json.loads(capsys.readouterr().out) == table
    assert json.loads((tmp_path / "r.json").read_text()) == table
    emit_json_report(table)  # no path: print only
    assert json.loads(capsys.readouterr().out) == table


def test_real_samples_folder_comes_from_an_environment_variable(monkeypatch, tmp_path):
    import helpers

    monkeypatch.setenv(helpers.REAL_SAMPLES_ENV, str(tmp_path))
    assert helpers.real_samples_dir() == tmp_path
    monkeypatch.delenv(helpers.REAL_SAMPLES_ENV)
    assert helpers.real_samples_dir().parts[-3:] == ("shared", "eval", "celebamask-hq")
    assert helpers.REAL_SAMPLES_ENV in helpers.REAL_SKIP_REASON


def test_checkpoints_and_json_are_written_as_ordinary_files(tmp_path):
    import os
    import stat

    from mm2latent.common.checkpoint import save_checkpoint

    old = os.umask(0o022)
    try:
        st = save_checkpoint(tmp_path / "m", {"w": torch.zeros(3)}, {"kind": "x"})
    finally:
        os.umask(old)
    for p in (st, tmp_path / "m.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_resume_removes_torn_checkpoint_writes_and_readers_leave_them(tmp_path):
    from mm2latent.train import state

    d = tmp_path / "checkpoints"
    d.mkdir()
    torn = d / ".step-00000100.safetensors.k2j3.tmp"
    torn.write_bytes(b"half")
    keep = d / "notes.txt"
    keep.write_text("kept")
    # a reader beside a live run (a bench, a watcher) must not delete a write in progress
    state.list_checkpoints(tmp_path)
    assert state.latest_good_checkpoint(tmp_path, "x") is None and torn.exists()
    # the process that resumes the run cleans up
    assert state.latest_good_checkpoint(tmp_path, "x", clean=True) is None
    assert not torn.exists() and keep.exists()
