#!/usr/bin/env bash
# Batched sweeps on a GPU: K = 16,384 copies of the post's sigmoid net and K = 1024 of the MLP 2→64→64→1
# (model=mlp data=moons model.hidden=[64,64]), each one whole `scripts/train.py -m hydra/sweeper=batched`
# process with trainer.accelerator=gpu, every setting but η and momentum the default (200 steps, every
# monitor on, each copy its own run directory), then one default single run of each net on the same device;
# one line of figures per sweep and per single run (`gpu_sweep …`, `gpu_single …`).
#
#   bash scripts/gpu_sweep.sh                      # on the GPU machine, from the repository root
#   GPU_SWEEP_ACCELERATOR=cpu GPU_SWEEP_K_SIGMOID=4 GPU_SWEEP_K_MLP=3 bash scripts/gpu_sweep.sh   # a dry run
#
# The copies sweep a grid of η (log-spaced from 0.001 to 100) × momentum (0 to 0.99): a grid of 128 × 128 for
# K = 16,384 (a list of 16,384 learning rates would pass Linux's 128 KiB limit on one argument), 32 × 32 for
# K = 1024; any K (the number of momenta is the largest power of two whose square is at most K).
# Settings (environment): GPU_SWEEP_ACCELERATOR (gpu), GPU_SWEEP_K_SIGMOID (16384), GPU_SWEEP_K_MLP (1024),
# GPU_SWEEP_OUT (where the sweeps go: a new temporary directory), GPU_SWEEP_SINGLE (1; 0: no single runs),
# PYTHON (python).
set -euo pipefail

ACCELERATOR=${GPU_SWEEP_ACCELERATOR:-gpu}
K_SIGMOID=${GPU_SWEEP_K_SIGMOID:-16384}
K_MLP=${GPU_SWEEP_K_MLP:-1024}
OUT=${GPU_SWEEP_OUT:-$(mktemp -d -t gpu-sweep-XXXXXX)}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}

# "<learning rates> <momenta>": a grid of K jobs (η log-spaced over 0.001…100, momenta evenly over 0…0.99)
grid() {
  "$PYTHON" - "$1" <<'EOF'
import sys

import numpy as np

k = int(sys.argv[1])
n_mu = 1
while (2 * n_mu) ** 2 <= k:
    n_mu *= 2
n_lr = k // n_mu
if n_lr * n_mu != k:
    raise SystemExit(f"K = {k} is not a multiple of {n_mu} momenta: use a K such as 16384, 1024, 4 or 3")
lrs = ",".join(f"{v:.6g}" for v in np.logspace(-3, 2, n_lr))
mus = ",".join(f"{v:.6g}" for v in np.linspace(0, 0.99, n_mu)) if n_mu > 1 else "0"
print(lrs, mus)
EOF
}

device_name() {
  "$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
}

seconds() { date +%s.%N; }

# sweep <name> <K> <overrides...>: one whole batched sweep process; prints its figures
sweep() {
  local name=$1 k=$2
  shift 2
  read -r lrs mus < <(grid "$k")
  local dir="$OUT/$name" started ended
  started=$(seconds)
  "$PYTHON" "$ROOT/scripts/train.py" -m hydra/sweeper=batched "$@" "optim.lr=$lrs" "optim.momentum=$mus" \
    "trainer.accelerator=$ACCELERATOR" trainer.enable_progress_bar=false "hydra.sweep.dir=$dir" \
    >"$OUT/$name.log" 2>&1 || { tail -n 40 "$OUT/$name.log" >&2; exit 1; }
  ended=$(seconds)
  "$PYTHON" - "$name" "$k" "$dir" "$started" "$ended" "$ACCELERATOR" "$(device_name)" <<'EOF'
import json
import sys
from collections import Counter
from pathlib import Path

name, k, sweep_dir, started, ended, accelerator, device = sys.argv[1:]
summaries = [json.loads(p.read_text()) for p in Path(sweep_dir).glob("*/summary.json")]
statuses = Counter(s["status"] for s in summaries)
wall = float(ended) - float(started)
print(
    f"gpu_sweep {name} K={k} accelerator={accelerator} device={device.replace(' ', '_')} wall_s={wall:.1f} "
    f"per_copy_ms={1000 * wall / int(k):.2f} runs={len(summaries)} "
    + " ".join(f"{status}={n}" for status, n in sorted(statuses.items()))
)
EOF
}

# single <name> <overrides...>: one default single run on the same device, whole process
single() {
  local name=$1 started ended
  shift
  started=$(seconds)
  "$PYTHON" "$ROOT/scripts/train.py" "$@" "trainer.accelerator=$ACCELERATOR" trainer.enable_progress_bar=false \
    "hydra.run.dir=$OUT/single_$name" >"$OUT/single_$name.log" 2>&1 || { tail -n 40 "$OUT/single_$name.log" >&2; exit 1; }
  ended=$(seconds)
  "$PYTHON" -c "import sys; print(f'gpu_single {sys.argv[1]} accelerator=$ACCELERATOR wall_s={float(sys.argv[3]) - float(sys.argv[2]):.1f}')" \
    "$name" "$started" "$ended"
}

echo "gpu_sweep: writing into $OUT"
sweep sigmoid "$K_SIGMOID" model=sigmoid
sweep mlp "$K_MLP" model=mlp data=moons "model.hidden=[64,64]"
if [ "${GPU_SWEEP_SINGLE:-1}" != 0 ]; then
  single sigmoid model=sigmoid
  single mlp model=mlp data=moons "model.hidden=[64,64]"
fi
