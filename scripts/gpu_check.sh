#!/usr/bin/env bash
# The GPU checks of rnnjax, in one command, on a machine with an NVIDIA GPU (docs/devices.md, "On a GPU").
#
#     bash scripts/gpu_check.sh OUTDIR [--quick]
#
# 0. Stops in one line, before writing anything, where nvidia-smi finds no GPU.
# 1. Python: uses a JAX that already sees a CUDA GPU (and its torch, if it has CUDA); otherwise
#    installs jax[cuda12] and a CUDA 12 torch into a fresh venv (OUTDIR/venv), which needs the
#    package registry (and download.pytorch.org for torch; without it the torch columns are skipped). Packages rnnjax needs that are missing are installed from ./.whl/*.whl when that folder
#    exists (wheels downloaded beforehand on a machine with a registry), else from the registry.
# 2. nvidia-smi and the versions        -> OUTDIR/machine.txt
# 3. the cuDNN tests on the GPU         -> OUTDIR/tests.log (tests/test_cudnn.py, RNNJAX_TEST_PLATFORMS=cuda)
# 4. the benchmark: rows (LSTM L=1/2/4, GRU, RNN: rnnjax, autodiff, flax, cudnn, torch CUDA), the large
#    shapes (h 1024, b 256, t 256) and the reference experiment end to end (the default command, and
#    impl=cudnn, and the torch script)  -> OUTDIR/BENCHMARKS-gpu.md and OUTDIR/gpu.json
#
# --quick: 3 rounds of 5 steps and 50 end-to-end epochs (a smoke check, "not judged") instead of the
# report's standard (7 x 10 steps, 500 epochs). Exit status: the tests' (the benchmark runs regardless).
set -uo pipefail
OUT=${1:?usage: bash scripts/gpu_check.sh OUTDIR [--quick]}
QUICK=${2:-}
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU here (nvidia-smi finds none); run scripts/gpu_check.sh on a machine with one"
  exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

PY=python3
if ! $PY -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  echo "# no JAX with a CUDA GPU here: installing jax[cuda12] (and a CUDA 12 torch) into $OUT/venv"
  $PY -m venv "$OUT/venv" && PY="$OUT/venv/bin/python"
  $PY -m pip install -q "jax[cuda12]" || { echo "error: cannot install jax[cuda12] (no registry?)"; exit 2; }
  $PY -m pip install -q torch --index-url https://download.pytorch.org/whl/cu126 \
    || echo "# no CUDA torch: the benchmark's torch columns are skipped"
fi
# rnnjax's own dependencies that the image may lack, without touching its jax/torch
missing=$($PY - <<'EOF'
import importlib.util
need = {"ml_collections": "ml_collections", "tensorboardX": "tensorboardX", "orbax.checkpoint": "orbax-checkpoint",
        "optax": "optax", "flax": "flax", "tqdm": "tqdm", "matplotlib": "matplotlib", "absl": "absl-py",
        "pytest": "pytest", "hypothesis": "hypothesis"}
print(" ".join(pip for mod, pip in need.items() if importlib.util.find_spec(mod.split(".")[0]) is None
               or (mod == "orbax.checkpoint" and importlib.util.find_spec("orbax") is None)))
EOF
)
if [ -n "$missing" ]; then
  if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/rnnjax-site .whl/*.whl && export PYTHONPATH=/tmp/rnnjax-site
  else
    $PY -m pip install -q $missing || { echo "error: missing $missing and no .whl/ folder"; exit 2; }
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's rnnjax, without installing it

{ nvidia-smi; $PY -c "import jax, sys; print(sys.version); print('jax', jax.__version__, jax.devices());
import importlib.util as u; t = u.find_spec('torch') and __import__('torch'); print('torch', t and (t.__version__, t.cuda.is_available()))"; } \
  > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# one process on the one GPU: without pyproject's test workers (pytest-xdist may be missing from the image)
RNNJAX_TEST_PLATFORMS=cuda $PY -m pytest -q -p no:cacheprovider -p no:xdist -o addopts=-ra tests/test_cudnn.py 2>&1 | tee "$OUT/tests.log"
status=${PIPESTATUS[0]}

if [ "$QUICK" = "--quick" ]; then bench=(--repeats=3 --steps=5 --e2e_epochs=50); else bench=(); fi
$PY scripts/benchmark.py --sections=rows,large,end_to_end "${bench[@]}" \
  --out="$OUT/BENCHMARKS-gpu.md" --json="$OUT/gpu.json" > "$OUT/benchmark.log" 2>&1
echo "# benchmark exit status $?; report: $OUT/BENCHMARKS-gpu.md"
tail -5 "$OUT/benchmark.log"
exit "$status"
