#!/bin/bash
# Multi-node DDP without SLURM: run this on every node with the same MASTER_ADDR (node 0's address) and MASTER_PORT.
#
#   MASTER_ADDR=10.0.0.1 NNODES=2 NODE_RANK=0 bash scripts/torchrun_ddp.sh configs/vit_cifar10.yaml   # on node 0
#   MASTER_ADDR=10.0.0.1 NNODES=2 NODE_RANK=1 bash scripts/torchrun_ddp.sh configs/vit_cifar10.yaml   # on node 1
#
# GPU nodes run one process per GPU (configs/trainer/ddp.yaml); CPU nodes, or ACCELERATOR=cpu, run NPROC_PER_NODE
# processes (default 1) over gloo. Extra arguments go to `module14 fit` (e.g. --ckpt_path <run>/checkpoints/last.ckpt
# to resume). torchrun is the one installed beside module14: the module14 on PATH, else this repository's .venv;
# TORCHRUN=<path> chooses another. Lightning takes ranks and world size from torchrun (TorchElasticEnvironment).
set -euo pipefail
CONFIG=${1:?usage: scripts/torchrun_ddp.sh CONFIG [module14 fit arguments]}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
if command -v module14 >/dev/null 2>&1; then bin=$(dirname "$(command -v module14)"); else bin="$here/.venv/bin"; fi
TORCHRUN=${TORCHRUN:-$bin/torchrun}
if [ ! -x "$TORCHRUN" ]; then
    echo "torchrun_ddp.sh: no torchrun at $TORCHRUN. Install module14 first (see README) and activate its" \
         "environment (source .venv/bin/activate), or set TORCHRUN=<path to torchrun>." >&2
    exit 2
fi
if [ -z "${ACCELERATOR:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then ACCELERATOR=gpu; else ACCELERATOR=cpu; fi
fi
if [ "$ACCELERATOR" = gpu ]; then
    NPROC=${NPROC_PER_NODE:-$(nvidia-smi -L | wc -l)}
    hardware=(--config "$here/configs/trainer/ddp.yaml")
else
    NPROC=${NPROC_PER_NODE:-1}
    hardware=(--trainer.accelerator cpu --trainer.strategy ddp)
fi
exec "$TORCHRUN" --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}" --nproc-per-node "$NPROC" \
    --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
    "$here/cli.py" fit --config "$CONFIG" "${hardware[@]}" \
    --trainer.num_nodes "${NNODES:-1}" --trainer.devices "$NPROC" "$@"
