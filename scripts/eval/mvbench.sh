#!/usr/bin/env bash
# MVBench, the mean over its 20 tasks (Table 1 "MVB").
# Usage: scripts/eval/mvbench.sh MODEL_DIR [lmms-eval args]; settings and env vars: scripts/eval/_run.sh.
exec "$(dirname "$0")/_run.sh" mvbench "$@"
