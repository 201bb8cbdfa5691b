#!/usr/bin/env bash
# Run one lmms-eval task on a CrossLMM model dir with the settings of docs/evaluation.md.
# Usage: _run.sh TASK MODEL_DIR [extra lmms-eval args, e.g. --limit 20]
# Env: FRAMES (uniformly sampled frames per video, default 64), OUT (lmms-eval --output_path, default
# results), NUM_GPUS (default 1; >1 launches one process per GPU with accelerate), BATCH_SIZE (default 1).
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 TASK MODEL_DIR [lmms-eval args...]" >&2
    exit 2
fi
task=$1 model=$2
shift 2
if [[ ! -d $model ]]; then
    echo "$0: $model: no such model directory" >&2
    exit 2
fi
out=${OUT:-results}
gpus=${NUM_GPUS:-1}
if ((gpus > 1)); then
    launch=(accelerate launch --num_processes "$gpus" -m lmms_eval)
else
    launch=(python -m lmms_eval)
fi
mkdir -p "$out"
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT
"${launch[@]}" --model crosslmm --model_args "pretrained=$model,max_frames=${FRAMES:-64}" \
    --tasks "$task" --batch_size "${BATCH_SIZE:-1}" --log_samples --output_path "$out" "$@"
# lmms-eval exits 0 even when a run fails, so check that it wrote a results file.
if [[ -z $(find "$out" -name '*_results.json' -newer "$stamp" -print -quit) ]]; then
    echo "$0: lmms-eval wrote no results file for $task under $out; see its log above" >&2
    exit 1
fi
