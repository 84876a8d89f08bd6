#!/usr/bin/env bash
# Start (or continue) the world-generator training run in the background at the start of a session.
#   bash tools/generator_session.sh            # CPU; logs to runs/gw.log
# It rebuilds the training cache if this machine lacks it (about 11 min on 2 cores; the cache is
# deterministic), restores the checkpoint carried in train_state/generator_world when it is newer
# than the run's own, and resumes. At the end of a session, carry the newest checkpoint with
#   .venv/bin/python tools/carry_checkpoint.py pack runs/gw train_state/generator_world
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/gw}
[ -d runs/cache_train128 ] || $PY -m mm2latent.cli.main world cache --split train --num 40000 --size 128 --out runs/cache_train128
[ -d train_state/generator_world ] && $PY tools/carry_checkpoint.py unpack train_state/generator_world "$RUN"
nohup $PY -m mm2latent.cli.main train generator --recipe configs/generator_world.toml --out "$RUN" \
    --compile --threads "${THREADS:-2}" --sample-every 1000 "$@" > runs/gw.log 2>&1 &
echo "training in the background (pid $!); progress: tail -f runs/gw.log"
