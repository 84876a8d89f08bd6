#!/usr/bin/env bash
# Synthesis-only generator phases on a GPU machine (written for the device tool's H200, which has no
# copy of our caches and no registry): render the train split there once, then continue the shipped
# generator with encoder and mapping frozen -- one run per VARIANT, all at once on the one GPU -- and
# leave each run's export + logs in OUT_DIR/NAME.tar (NAME = v1, v2, ...), summaries in OUT_DIR.
#
#   tools/gpu_generator_phase.sh OUT_DIR WALL_SECONDS [NUM_RENDERS] ["VARIANT FLAGS" ...]
#
# Each VARIANT is one quoted string of extra 'train generator-ae' flags (none given: one run with the
# base flags). WALL_SECONDS bounds the whole script (render + train + export); the training budget is
# what the render leaves, minus a margin. PY (default python3), DEVICE (default cuda) and THREADS
# (CPU threads per run, default 4) may be overridden.
set -u
OUT=${1:?OUT_DIR}; WALL=${2:?WALL_SECONDS}; NUM=${3:-20000}
shift $(( $# < 3 ? $# : 3 ))
[ $# -eq 0 ] && set -- ""
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
echo "rendered $NUM in $(( T1 - T0 )) s; training $# run(s) for $MIN min" | tee -a "$OUT/env.txt"
i=0; pids=()
for variant in "$@"; do
  i=$(( i + 1 )); run="$WORK/v$i"; mkdir -p "$run"
  echo "v$i: $variant" | tee -a "$OUT/env.txt"
  # shellcheck disable=SC2086  # a variant is a list of flags
  timeout -s TERM $(( LEFT + 40 )) $PY -m mm2latent.cli.main train generator-ae --data "$WORK/cache" --out "$run" \
    --init src/mm2latent/weights --freeze-latents --adv-start 300 --d-warmup 300 --adv-weight 0.1 --seg-weight 1.0 \
    --attr-weight 0.5 --coeff-weight 2.0 --minutes "$MIN" --device "${DEVICE:-cuda}" --threads "${THREADS:-4}" \
    $variant >"$run/train.log" 2>&1 &
  pids+=($!)
done
rc=0; i=0
for pid in "${pids[@]}"; do
  i=$(( i + 1 )); run="$WORK/v$i"
  wait "$pid"; r=$?; [ $r -ne 0 ] && rc=$r
  last=$(ls "$run/samples/"*.png 2>/dev/null | tail -1); [ -n "$last" ] && cp "$last" "$run/last_samples.png"
  (cd "$run" && tar cf "$OUT/v$i.tar" generator.safetensors generator.json log.jsonl train.log last_samples.png 2>/dev/null)
  echo "v$i rc=$r: $(tr '\r' '\n' <"$run/train.log" | grep -v '^\s*$' | tail -1)" | tee -a "$OUT/env.txt"
done
echo "wall $(( $(date +%s) - T0 )) s" | tee -a "$OUT/env.txt"
exit $rc
