#!/usr/bin/env bash
# CrossLMM-7B stage 1 on NNODES x NPROC_PER_NODE GPUs (global batch 512). Extra args are config overrides.
# Run on every node with the same MASTER_ADDR/MASTER_PORT and its own NODE_RANK.
exec "$(dirname "$0")/_launch.sh" configs/train/crosslmm-7b-stage1.yaml 512 8 "$@"
