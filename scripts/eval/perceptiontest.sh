#!/usr/bin/env bash
# PerceptionTest val, multiple choice (Table 1 "PercTest").
# Usage: scripts/eval/perceptiontest.sh MODEL_DIR [lmms-eval args]; settings and env vars: scripts/eval/_run.sh.
exec "$(dirname "$0")/_run.sh" perceptiontest_val_mc "$@"
