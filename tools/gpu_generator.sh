#!/usr/bin/env bash
# One lent-GPU call (device tool, at most 9 minutes) of the world-generator run, then back to CPU.
# Here, before the call:  .venv/bin/python tools/carry_checkpoint.py pack runs/gw train_state/generator_world
# The call (command for the device tool's run, timeout_s 560):  bash tools/gpu_generator.sh
# Here, after it:         .venv/bin/python tools/carry_checkpoint.py unpack <files_at>/carry runs/gw
#                         then bash tools/generator_session.sh to continue on the CPU.
# The GPU machine renders the training cache itself (16 cores, about 3 minutes: it is
# deterministic, so the run's data order still holds), trains with bf16 autocast until
# MINUTES run out and packs the new checkpoint into $OUT/carry (parts of 15 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-4.5}
python3 -m pip install -q --no-deps -e . 2>/dev/null || python3 -m pip install -q -e .
python3 -m pip install -q ftfy regex 2>/dev/null || true
python3 -m mm2latent.cli.main world cache --split train --num 40000 --size 128 --out runs/cache_train128 --workers 16
python3 tools/carry_checkpoint.py unpack train_state/generator_world runs/gw
MM2LATENT_NO_PROGRESS=1 python3 -m mm2latent.cli.main train generator --recipe configs/generator_world.toml \
    --out runs/gw --device cuda --amp bf16 --minutes "$MINUTES" --ckpt-minutes 2
python3 tools/carry_checkpoint.py pack runs/gw "$OUT/carry"
tail -n 3 runs/gw/log.jsonl
