#!/usr/bin/env bash
# MLVU dev, multiple-choice M-avg (Table 1 "MLVU").
# Usage: scripts/eval/mlvu.sh MODEL_DIR [lmms-eval args]; settings and env vars: scripts/eval/_run.sh.
exec "$(dirname "$0")/_run.sh" mlvu_dev "$@"
