"""What a new user meets first: a plain install that tokenizes offline, honest messages, bounded input."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mm2latent.cli.main", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=300)


@pytest.mark.slow
def test_a_built_wheel_carries_the_tokenizer_vocabulary_and_the_weights(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "License classifiers are deprecated" not in r.stderr and "license" not in r.stderr.lower(), r.stderr
    (wheel,) = tmp_path.glob("mm2latent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mm2latent/assets/bpe_simple_vocab_16e6.txt.gz" in names
    assert "mm2latent/weights/generator.safetensors" in names


def test_seeds_out_of_range_are_refused_in_one_line():
    r = _cli("generate", "--text", "a man", "--seed", str(2**64 + 5), "--out", "never.png")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "seeds lie in 0..2**64-1" in r.stderr
    assert not Path("never.png").exists()
    r = _cli("generate", "--text", "a man", "--seed", "-1", "--out", "never.png")
    assert r.returncode == 2 and "seeds lie in" in r.stderr


def test_a_caption_cut_to_the_context_says_so_once(tmp_path):
    long = " ".join(["a smiling woman with blond hair and"] * 20)
    r = _cli("generate", "--text", long, "--out", str(tmp_path / "f.png"))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "truncated" in ln]
    assert lines == ["mm2latent: warning: 1 text(s) longer than 77 tokens were truncated (rows [0])"]


def test_help_and_project_metadata_say_what_is_true():
    r = _cli("--help")
    assert "train models (stylegan2)" not in r.stdout and "generator" in r.stdout
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"  # an SPDX string, not the deprecated table
    assert "-q" not in meta.get("tool", {}).get("pytest", {}).get("ini_options", {}).get("addopts", "")
    make = (ROOT / "Makefile").read_text()
    test_line = next(ln for ln in make.splitlines() if "pytest" in ln)
    assert test_line.count("-q") == 1 and "-rs" in test_line  # one -q keeps the summary; skips are reported
