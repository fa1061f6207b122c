#!/usr/bin/env bash
# One unattended GPU session: RESULTS.md's ddpm_mnist sampler table at 10,000 samples (every sampler, DDPM-1000
# included), the attention kernels (benchmarks/attention.py --device cuda), the loader with its batches augmented on the
# GPU and with the split held there (benchmarks/input_pipeline.py --device cuda), and then benchmarks/gpu_check.py (its
# real fit holds its data on the GPU, data.on_device), on an offline GPU machine that
# has torch and lightning but not this project's lighter dependencies. Two steps:
#
#   # dev machine, after `python benchmarks/results.py --row vit_mnist` and `--row ddpm_mnist` (~50 min on 2 cores;
#   # the table scores the ddpm_mnist row's checkpoint on the vit_mnist row's ViT, both under runs/results/):
#   bash benchmarks/gpu_session.sh pack .gpu_data
#
#   # GPU machine, repository root, with .gpu_data/ and runs/results/{vit,ddpm}_mnist/seed42/final.ckpt sent along
#   # (~50 MB in all); MODULE14_COMMIT names the commit when the tree arrives without its .git:
#   MODULE14_COMMIT=<hash> bash benchmarks/gpu_session.sh run .gpu_data OUT_DIR SECONDS
#
# `pack` writes the MNIST files gzipped (11 MB), a 4000 + 1000 image CIFAR-10 subset for gpu_check.py, and wheels of
# the dependencies torch images often lack (jsonargparse with its signatures extras, torchdata), at the versions
# installed here, for Python $PY (default 3.12). `run` installs those wheels into /tmp/site, draws the table in two
# passes (every sampler but DDPM-1000, then DDPM-1000, so a slow DDPM-1000 cannot take the others down with it), copies
# results.json and RESULTS.md into OUT_DIR after each pass, and gives gpu_check.py what is left of SECONDS. Back on the
# dev machine, copy OUT_DIR/results.json over docs/results/results.json and run `python benchmarks/results.py --render`.
# N (default 10000) sets the samples per sampler: a small N rehearses the script on a CPU.
set -u
cd "$(dirname "$0")/.."
N=${N:-10000}
PY=${PY:-3.12}
LIGHT_DEPS="jsonargparse docstring_parser typeshed_client torchdata"

pack() {
  local dest=$1
  : "${MODULE14_DATA_DIR:?set MODULE14_DATA_DIR to the data root that holds MNIST/raw and cifar-10-batches-py}"
  python benchmarks/gpu_check.py --pack "$dest" || exit 1
  mkdir -p "$dest/MNIST/raw" "$dest/whl"
  for f in "$MODULE14_DATA_DIR"/MNIST/raw/*-ubyte; do gzip -c "$f" > "$dest/MNIST/raw/$(basename "$f").gz"; done
  local pins
  pins=$(python -c "from importlib.metadata import version; print(' '.join(f'{n}=={version(n)}' for n in '$LIGHT_DEPS'.split()))")
  python -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest/whl" $pins || exit 1
  du -sh "$dest"
}

run() {
  local data=$1 out=$2 seconds=$3 t0
  t0=$(date +%s)
  elapsed() { echo $(($(date +%s) - t0)); }
  local missing=() f
  compgen -G "$data/MNIST/raw/*-ubyte.gz" > /dev/null || missing+=("$data/MNIST/raw/*.gz (bash benchmarks/gpu_session.sh pack $data)")
  for f in runs/results/vit_mnist/seed42/final.ckpt runs/results/ddpm_mnist/seed42/final.ckpt; do
    [ -f "$f" ] || missing+=("$f (python benchmarks/results.py --row $(basename "$(dirname "$(dirname "$f")")"))")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    printf 'gpu_session.sh run: missing, make it on the dev machine and send it along:\n' >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
  fi
  mkdir -p "$out"
  if compgen -G "$data/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$data"/whl/*.whl \
      || exit 3
    export PYTHONPATH=/tmp/site:$PWD
  fi
  export MODULE14_DATA_DIR=$PWD/$data WANDB_MODE=offline PYTHONUNBUFFERED=1
  gunzip -kf "$data"/MNIST/raw/*.gz
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__,
              'cuda', torch.cuda.is_available())"

  echo "=== sampler table: every sampler but DDPM-1000, at $(elapsed) s"
  timeout 200 python3 benchmarks/results.py --sampler-table "$N" --samplers ddim100_eta0 ddim100_eta1 ddim50_eta0 \
    ddim50_eta1 ddim20_eta0 ddim20_eta1 ddim10_eta0 ddim10_eta1 dpm_solver20 dpm_solver10
  echo "exit $? at $(elapsed) s"
  cp docs/results/results.json RESULTS.md "$out/"
  echo "=== sampler table: DDPM-1000, at $(elapsed) s"
  timeout 300 python3 benchmarks/results.py --sampler-table "$N" --samplers ddpm1000
  echo "exit $? at $(elapsed) s"
  cp docs/results/results.json RESULTS.md "$out/"
  (cd runs/results/ddpm_mnist && tar cf "$out/sampler_grids.tar" "samplers_$N"/*.png) || true

  echo "=== attention kernels on the GPU (benchmarks/attention.py), at $(elapsed) s"
  timeout 150 python3 benchmarks/attention.py --device cuda --rounds 5 | tee "$out/attention.md"
  echo "exit $? at $(elapsed) s"
  echo "=== input pipeline: the loader, each batch augmented on the GPU, and the split held there (benchmarks/input_pipeline.py), at $(elapsed) s"
  timeout 150 python3 benchmarks/input_pipeline.py --seconds 2 --datasets MNIST CIFAR10 --configs --device cuda \
    | tee "$out/input_pipeline.md"
  echo "exit $? at $(elapsed) s"

  local left=$((seconds - $(elapsed) - 25))
  echo "=== gpu_check, budget $left s"
  if [ "$left" -gt 60 ]; then
    timeout $((left + 15)) python3 benchmarks/gpu_check.py --data "$data" --out /tmp/gpu_check --budget-s "$left"
    echo "exit $? at $(elapsed) s"
    cp /tmp/gpu_check/results.md "$out/gpu_check.md"
    cp /tmp/gpu_check/results.json "$out/gpu_check.json"
  fi
  echo "=== done at $(elapsed) s"
}

case "${1:-}" in
  pack) [ $# -eq 2 ] || { echo "usage: $0 pack DIR" >&2; exit 2; }; pack "$2" ;;
  run) [ $# -eq 4 ] || { echo "usage: $0 run DATA_DIR OUT_DIR SECONDS" >&2; exit 2; }; run "$2" "$(realpath -m "$3")" "$4" ;;
  *) echo "usage: $0 pack DIR | run DATA_DIR OUT_DIR SECONDS (see the top of this file)" >&2; exit 2 ;;
esac
