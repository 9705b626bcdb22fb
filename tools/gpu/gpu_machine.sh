#!/usr/bin/env bash
# The reference GPU runs in one command, for a machine with a GPU and no network.
#
#   TFX_COURSE_COMMIT=$(git rev-parse HEAD) bash tools/gpu/gpu_machine.sh [BUDGET] [OUT] [ARGS]
#
# Needs only python3 with torch, tokenizers and sacrebleu; the package is used from this tree
# (PYTHONPATH=.), nothing is installed. The Multi30k files must already be in
# $TFX_COURSE_DATA/multi30k (default .data/multi30k, which git ignores: copy them there).
# Trains each preset of $PRESETS (default: gpu-base, then the candidate gpu-small), each planned
# to end within BUDGET minutes (default 3; 0 trains the preset's whole schedule, as the
# reference run did: PRESETS=gpu-base bash tools/gpu/gpu_machine.sh 0), and scores it.
# Everything lands in OUT (default $OUT, else results/), eight files at most: machine.txt (GPU,
# driver, library versions), log.txt, and per preset NAME.json, NAME_history.json and
# NAME_curves.png (without matplotlib, draw the curves afterwards:
# python tools/gpu/gpu_run.py --replot results/NAME_history.json).
# ARGS go to gpu_run.py (e.g. --smoke to try the path on a CPU in seconds).
set -uo pipefail
budget=${1:-3}
out=${2:-${OUT:-results}}
presets=${PRESETS:-gpu-base gpu-small}
export TFX_COURSE_DATA=${TFX_COURSE_DATA:-.data}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
if [ ! -s "$TFX_COURSE_DATA/multi30k/train.de.gz" ]; then
    echo "no Multi30k in $TFX_COURSE_DATA/multi30k: copy train/val/test_2016_flickr .de.gz/.en.gz there" >&2
    exit 2
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    python3 - <<'PY'
import sys, torch, tokenizers, sacrebleu
print(f"python {sys.version.split()[0]} torch {torch.__version__} cuda {torch.version.cuda} "
      f"available {torch.cuda.is_available()} tokenizers {tokenizers.__version__} "
      f"sacrebleu {sacrebleu.__version__}")
PY
} >"$out/machine.txt"
cat "$out/machine.txt"
# A planned run ends well inside this limit; it only stops one that hangs.
# (gpu_run.py stops training after --max-minutes, 10 by default, whatever the plan.)
if [ "$budget" = 0 ]; then plan=(); minutes=10; else plan=(--budget-minutes "$budget"); minutes=$budget; fi
limit=$(python3 -c "print(int(60 * $minutes * 1.25 + 180))")
status=0
for preset in $presets; do
    echo "== $preset" | tee -a "$out/log.txt"
    timeout "$limit" python3 tools/gpu/gpu_run.py --preset "$preset" "${plan[@]}" \
        --out "$out" "${@:3}" 2>&1 | tr '\r' '\n' | grep -v '^\s*$' >>"$out/log.txt"
    code=${PIPESTATUS[0]}
    [ "$code" -ne 0 ] && status=$code && echo "$preset: exit $code" | tee -a "$out/log.txt"
    grep -E '^(plan|\{"device|test2016)' "$out/log.txt" | tail -n 4
done
exit "$status"
