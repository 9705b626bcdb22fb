#!/bin/sh
# Give the learner their own copy of the lessons and exercises on first start (a hub may mount
# an empty persistent home here), then run the command: JupyterLab, or the hub's single-user
# server. The library, its checkpoint and the kernel stay in /opt/tfx_course.
set -eu
source="${TFX_COURSE_HOME:-/opt/tfx_course}"
course="$HOME/tfx_course"
if [ ! -e "$course" ]; then
    mkdir -p "$course"
    for part in notebooks exercises docs README.md; do
        cp -R "$source/$part" "$course/"
    done
fi
cd "$course"
exec "$@"
