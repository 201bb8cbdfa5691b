#!/usr/bin/env bash
# Shared multi-node launcher: scripts/_launch.sh CONFIG GLOBAL_BATCH PER_DEVICE_BATCH [key=value ...]
# Environment: NNODES (1), NPROC_PER_NODE (8), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500).
set -euo pipefail
config=$1 global_batch=$2 per_device=$3
shift 3
NNODES=${NNODES:-1} NPROC_PER_NODE=${NPROC_PER_NODE:-8} NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT=${MASTER_PORT:-29500}
world=$((NNODES * NPROC_PER_NODE))
if (( global_batch % (world * per_device) )); then
  echo "global batch $global_batch is not divisible by $world GPUs x $per_device per GPU" >&2
  exit 2
fi
grad_accum=$((global_batch / (world * per_device)))
exec torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m crosslmm.train --config "$config" per_device_batch_size="$per_device" grad_accum="$grad_accum" "$@"
