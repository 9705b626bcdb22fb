#!/usr/bin/env bash
# The side-by-side speed run in one command, for a machine with a GPU and no network.
#
#   TFX_COURSE_COMMIT=<commit> bash tools/gpu/speed_machine.sh [OUT] [ARGS]
#
# Needs only python3 with torch, tokenizers and sacrebleu; the package is used from this tree
# (PYTHONPATH=.), nothing is installed. The Multi30k files must already be in
# $TFX_COURSE_DATA/multi30k (default .data/multi30k, which git ignores: copy them there).
# Runs tools/gpu/speed_run.py (its budget: 480 s by default, --budget-seconds to change) under a
# hard limit of $LIMIT seconds (default 570, inside a 10-minute command). Everything lands in OUT
# (default $OUT, else results/speed): machine.txt (GPU, driver, library versions, C compiler),
# log.txt, and speed_summary.json, speed_train.json, speed_history.json, speed_sweep.json,
# speed_decoding.json, speed_profile.json and speed_profile.txt, each written as soon as its
# stage has something to say. ARGS go to speed_run.py (e.g. --smoke: every stage on a CPU).
set -uo pipefail
out=${1:-${OUT:-results/speed}}
limit=${LIMIT:-570}
export TFX_COURSE_DATA=${TFX_COURSE_DATA:-.data}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
if [ ! -s "$TFX_COURSE_DATA/multi30k/train.de.gz" ]; then
    echo "no Multi30k in $TFX_COURSE_DATA/multi30k: copy train/val/test_2016_flickr .de.gz/.en.gz there" >&2
    exit 2
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1 || true
    echo "C compiler (Triton and Inductor need one): $(command -v cc || command -v gcc || echo none)"
    python3 - <<'PY'
import sys, torch, tokenizers, sacrebleu
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "absent"
print(f"python {sys.version.split()[0]} torch {torch.__version__} cuda {torch.version.cuda} "
      f"available {torch.cuda.is_available()} triton {triton_version} "
      f"tokenizers {tokenizers.__version__} sacrebleu {sacrebleu.__version__}")
PY
} >"$out/machine.txt"
cat "$out/machine.txt"
timeout --kill-after=10 "$limit" python3 tools/gpu/speed_run.py --out "$out" "${@:2}" 2>&1 \
    | tr '\r' '\n' | grep -v -E '^\s*$|^DEBUG' >"$out/log.txt"
status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] && echo "speed_run.py: exit $status" | tee -a "$out/log.txt"
grep -E '^== ' "$out/log.txt" | tail -n 12
exit "$status"
