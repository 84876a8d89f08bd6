"""Carry a training run's newest checkpoint between machines in parts small enough to move.

A world-generator checkpoint (models, EMA, optimiser moments, RNG) is larger than what a git
commit should hold in one file or what the lent GPU machine returns per file (16 MiB). ``pack``
splits the newest verified checkpoint of a run into ``part-NN`` files plus its JSON; ``unpack``
joins them back into ``RUN/checkpoints`` and verifies the tensor checksum, so resuming continues
exactly where the other machine stopped.

    python tools/carry_checkpoint.py pack runs/gw train_state/generator_world
    python tools/carry_checkpoint.py unpack train_state/generator_world runs/gw
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

PART_BYTES = 15 * 1024 * 1024


def pack(run_dir: Path, dest: Path, kind: str) -> None:
    from mm2latent.train import state as ckpt

    found = ckpt.latest_good_checkpoint(run_dir, kind)
    if not found:
        sys.exit(f"no readable checkpoint in {run_dir}")
    stem = found[0]
    data = stem.with_suffix(".safetensors").read_bytes()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    parts = []
    for k in range(0, len(data), PART_BYTES):
        name = f"part-{k // PART_BYTES:02d}"
        (tmp / name).write_bytes(data[k:k + PART_BYTES])
        parts.append(name)
    shutil.copy(stem.with_suffix(".json"), tmp / "checkpoint.json")
    (tmp / "carry.json").write_text(json.dumps({"stem": stem.name, "parts": parts, "bytes": len(data),
                                                "sha256": hashlib.sha256(data).hexdigest()}, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print(f"packed {stem.name} ({len(data) / 2**20:.1f} MiB) into {len(parts)} parts in {dest}")


def unpack(src: Path, run_dir: Path, kind: str) -> None:
    from mm2latent.train import state as ckpt

    info = json.loads((src / "carry.json").read_text())
    data = b"".join((src / p).read_bytes() for p in info["parts"])
    if len(data) != info["bytes"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
        sys.exit(f"{src}: the parts do not add up to the packed checkpoint")
    out = run_dir / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    stem = out / info["stem"]
    have = ckpt.list_checkpoints(run_dir)
    if have and int(have[0].name.split("-")[1]) >= int(info["stem"].split("-")[1]):
        print(f"{run_dir} already holds {have[0].name}, as new as {info['stem']}; nothing to do")
        return
    stem.with_suffix(".safetensors").write_bytes(data)
    shutil.copy(src / "checkpoint.json", stem.with_suffix(".json"))
    ckpt.read_checkpoint(stem, kind)  # verifies the tensor checksum
    print(f"unpacked {info['stem']} into {out}")


def main() -> int:
    from mm2latent.train.generator_world import TRAIN_KIND

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("pack", "unpack"))
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--kind", default=TRAIN_KIND)
    a = ap.parse_args()
    (pack if a.action == "pack" else unpack)(a.src, a.dest, a.kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
