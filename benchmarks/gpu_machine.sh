#!/usr/bin/env bash
# The reference GPU run in one command, for a machine with a GPU and no network.
#
#   TFX_COURSE_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_machine.sh [BUDGET_MINUTES] [OUT] [ARGS]
#
# Needs only python with torch, tokenizers and sacrebleu; the package is used from this tree
# (PYTHONPATH=.), nothing is installed. The Multi30k files must already be in
# $TFX_COURSE_DATA/multi30k (default .data/multi30k, which git ignores: copy them there).
# Training is planned to end within BUDGET_MINUTES (default 6); the scores follow. Everything
# lands in OUT (default $OUT, else results/): gpu_base.json, gpu_base_history.json, the log,
# the GPU's and the libraries' versions. ARGS go to gpu_run.py (e.g. --smoke to try it on a CPU). Draw the curves afterwards where matplotlib exists:
#   python benchmarks/gpu_run.py --replot results/gpu_base_history.json
set -uo pipefail
budget=${1:-6}
out=${2:-${OUT:-results}}
export TFX_COURSE_DATA=${TFX_COURSE_DATA:-.data}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$out"
if [ ! -s "$TFX_COURSE_DATA/multi30k/train.de.gz" ]; then
    echo "no Multi30k in $TFX_COURSE_DATA/multi30k: copy train/val/test_2016_flickr .de.gz/.en.gz there" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv" 2>&1 || true
python - <<'PY' 2>&1 | tee "$out/versions.txt"
import sys, torch, tokenizers, sacrebleu
print(f"python {sys.version.split()[0]} torch {torch.__version__} cuda {torch.version.cuda} "
      f"available {torch.cuda.is_available()} tokenizers {tokenizers.__version__} "
      f"sacrebleu {sacrebleu.__version__}")
PY
# The planned run ends well inside this limit; it only stops a run that hangs.
limit=$(python -c "print(int(60 * $budget * 1.25 + 240))")
PYTHONUNBUFFERED=1 timeout "$limit" python benchmarks/gpu_run.py --budget-minutes "$budget" \
    --out "$out" "${@:3}" 2>&1 | tr '\r' '\n' | grep -v '^\s*$' >"$out/gpu_base.log"
status=${PIPESTATUS[0]}
tail -n 25 "$out/gpu_base.log"
exit "$status"
