#!/usr/bin/env bash
# Every benchmark of docs/evaluation.md on one model, then the comparison table in docs/results.md.
# Usage: scripts/eval/all.sh MODEL_DIR [lmms-eval args]; env vars as in scripts/eval/_run.sh.
set -euo pipefail
here=$(dirname "$0")
for bench in videomme videomme_subs mvbench mlvu longvideobench perceptiontest egoschema; do
    "$here/$bench.sh" "$@"
done
crosslmm paper-table "${OUT:-results}" --out docs/results.md
