#!/usr/bin/env bash
# LongVideoBench val, video only (Table 1 "LVB").
# Usage: scripts/eval/longvideobench.sh MODEL_DIR [lmms-eval args]; settings and env vars: scripts/eval/_run.sh.
exec "$(dirname "$0")/_run.sh" longvideobench_val_v "$@"
