#!/bin/bash
# Multi-node DDP without SLURM: run this on every node with the same MASTER_ADDR (node 0's address).
#
#   MASTER_ADDR=10.0.0.1 NNODES=2 NODE_RANK=0 bash scripts/torchrun_ddp.sh configs/vit_cifar10.yaml   # on node 0
#   MASTER_ADDR=10.0.0.1 NNODES=2 NODE_RANK=1 bash scripts/torchrun_ddp.sh configs/vit_cifar10.yaml   # on node 1
#
# Lightning detects torchrun (TorchElasticEnvironment) and takes ranks and world size from it. Resume after a crash by
# adding --ckpt_path <run dir>/checkpoints/last.ckpt.
set -euo pipefail
CONFIG=${1:?usage: scripts/torchrun_ddp.sh CONFIG [extra CLI args]}
shift
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
.venv/bin/torchrun --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}" --nproc-per-node "$GPUS" \
    --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
    cli.py fit --config "$CONFIG" --config configs/trainer/ddp.yaml \
    --trainer.num_nodes "${NNODES:-1}" --trainer.devices "$GPUS" "$@"
