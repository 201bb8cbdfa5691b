#!/usr/bin/env bash
# Video-MME without subtitles (2,700 questions; Table 1 "w/o subs").
# Usage: scripts/eval/videomme.sh MODEL_DIR [lmms-eval args]; settings and env vars: scripts/eval/_run.sh.
exec "$(dirname "$0")/_run.sh" videomme "$@"
