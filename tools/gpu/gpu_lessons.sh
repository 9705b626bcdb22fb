#!/usr/bin/env bash
# Time every lesson and exercise solution on a GPU machine without network: the GPU column of
# the instructors' timetable (docs/instructors.md).
#
#   bash tools/gpu/gpu_lessons.sh [OUT] [NOTEBOOK ...]   (default: every lesson and solution)
#
# Needs python with torch, tokenizers, sacrebleu and matplotlib. The notebook tools (nbclient,
# nbformat, ipykernel and what they need) are installed from wheels in $WHEELS (default .whl,
# which git ignores) into a temporary folder when that folder exists; download them elsewhere
# for the machine's Python, e.g. for 3.12:
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 -d .whl nbclient nbformat ipykernel
# The Multi30k files must be in $TFX_COURSE_DATA/multi30k (default .data/multi30k).
# Writes OUT/lesson_times_gpu.json (default $OUT, else results/) and prints a Markdown table.
set -uo pipefail
out=${1:-${OUT:-results}}
wheels=${WHEELS:-.whl}
root=$(pwd)
export TFX_COURSE_DATA=$(cd "${TFX_COURSE_DATA:-.data}" && pwd)
export PYTHONHASHSEED=0 TQDM_MININTERVAL=1000 PYTHONUNBUFFERED=1
mkdir -p "$out"
site=$(mktemp -d)
if [ -d "$wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
        "$wheels"/*.whl || exit 1
fi
export PYTHONPATH=$root:$site${PYTHONPATH:+:$PYTHONPATH}
export JUPYTER_PATH=$site/share/jupyter
python3 -m ipykernel install --prefix "$site" --name tfx-course --display-name "Python (tfx_course)" \
    >/dev/null || exit 1
python3 tools/time_lessons.py --out "$out/lesson_times_gpu.json" "${@:2}" 2>&1 | tee "$out/lesson_times_gpu.log"
exit "${PIPESTATUS[0]}"
