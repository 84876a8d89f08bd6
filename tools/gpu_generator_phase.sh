#!/usr/bin/env bash
# One synthesis-only generator phase on a GPU machine (written for the device tool's H200, which has
# no copy of our caches and no registry): render the train split there, continue the shipped generator
# with encoder and mapping frozen, and leave the export + logs in OUT_DIR.
#
#   tools/gpu_generator_phase.sh OUT_DIR WALL_SECONDS [NUM_RENDERS] [extra 'train generator-ae' flags]
#
# WALL_SECONDS bounds the whole script (render + train + export); the training budget is what the
# render leaves, minus a margin. PY (default python3) and DEVICE (default cuda) may be overridden.
set -u
OUT=${1:?OUT_DIR}; WALL=${2:?WALL_SECONDS}; NUM=${3:-20000}
shift $(( $# < 3 ? $# : 3 ))
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK=${WORK:-/tmp/gpu_phase}
T0=$(date +%s)
mkdir -p "$OUT"
rm -rf "$WORK"; mkdir -p "$WORK"
{ nvidia-smi -L 2>/dev/null; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$OUT/env.txt"
$PY -m mm2latent.cli.main world cache --split train --num "$NUM" --size 128 --out "$WORK/cache" >"$OUT/cache.log" 2>&1 \
  || { tr '\r' '\n' <"$OUT/cache.log" | tail -5; exit 1; }
T1=$(date +%s)
LEFT=$(( WALL - (T1 - T0) - 60 ))
MIN=$($PY -c "print(round(max(0.2, $LEFT / 60), 2))")
echo "rendered $NUM in $(( T1 - T0 )) s; training for $MIN min" | tee -a "$OUT/env.txt"
timeout -s TERM $(( LEFT + 40 )) $PY -m mm2latent.cli.main train generator-ae --data "$WORK/cache" --out "$WORK/run" \
  --init src/mm2latent/weights --freeze-latents --adv-start 300 --d-warmup 300 --adv-weight 0.1 --seg-weight 1.0 \
  --attr-weight 0.5 --coeff-weight 2.0 --minutes "$MIN" --device "${DEVICE:-cuda}" "$@" >"$OUT/train.log" 2>&1
rc=$?
cp "$WORK/run/generator.safetensors" "$WORK/run/generator.json" "$WORK/run/log.jsonl" "$OUT/" 2>/dev/null
last=$(ls "$WORK/run/samples/"*.png 2>/dev/null | tail -1); [ -n "$last" ] && cp "$last" "$OUT/last_samples.png"
tr '\r' '\n' <"$OUT/train.log" | grep -v '^\s*$' | tail -4
echo "train rc=$rc, wall $(( $(date +%s) - T0 )) s"
exit $rc
