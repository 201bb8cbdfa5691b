#!/usr/bin/env bash
# Video-MME with subtitles (Table 1 "w/ subs").
# Usage: scripts/eval/videomme_subs.sh MODEL_DIR [lmms-eval args]; settings and env vars: scripts/eval/_run.sh.
exec "$(dirname "$0")/_run.sh" videomme_w_subtitle "$@"
