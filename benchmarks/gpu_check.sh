#!/usr/bin/env bash
# The GPU checks of issue 3 as ONE device call (a session has 15 minutes of device time in all, a
# machine takes a minute or more to start and goes back 30 s after a call, so there is no second
# try): the three speed recipes over seeds, in order of importance, each stage under its own time
# budget so that a slow one cannot take the others' results with it. Prepare with
# benchmarks/gpu_prepare.sh, then call the device tool with
#   command "bash benchmarks/gpu_check.sh", carry [".gpu-data"], timeout_s 580
# Results under $OUT: recipes.jsonl (one line per finished run, kept when a stage is cut short),
# log.txt (the recipe tables), gpu.txt. Budgets in seconds: SPEEDRUN_S, SEED001_S, RESNET_S.
# Dry run on a CPU: SKIP_WHEELS=1 PY=.venv/bin/python EXTRA="--set train.epochs=1 --set data.per_class=20" bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/cnnlab-gpu-check}
PY=${PY:-python3}
G=.gpu-data
mkdir -p "$OUT"
if [ -z "${SKIP_WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $G/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1 CNNLAB_REPORT=0 CNNLAB_CACHE=/tmp/cnnlab-cache
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || echo "no nvidia-smi"; } >"$OUT/gpu.txt" 2>&1
$PY -c "import torch, cnnlab; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cnnlab', cnnlab.__version__)" \
  2>&1 | tee -a "$OUT/log.txt" || exit 1
# EXTRA is split into words on purpose (several --set options).
stage() {  # stage BUDGET_S RECIPE SEEDS
  echo "## $2, $3 seeds, budget $1 s" | tee -a "$OUT/log.txt"
  timeout --signal=INT --kill-after=20 "$1" $PY benchmarks/recipes.py --recipes "$2" --seeds "$3" \
    --data $G/cifar10-jpeg.tar.gz --out "$OUT/recipes.jsonl" ${EXTRA:-} 2>&1 | tee -a "$OUT/log.txt"
  echo "## $2 exit ${PIPESTATUS[0]}" | tee -a "$OUT/log.txt"
}
stage "${SPEEDRUN_S:-180}" speedrun_cifar10 5
stage "${SEED001_S:-130}" seed001_cnn 3
stage "${RESNET_S:-240}" resnet18_cifar10 1
