#!/usr/bin/env bash
# Prove nnx on an NVIDIA GPU, offline, in one run of under 8 minutes (issues 7, 16).
#
#   benchmarks/gpu_check.sh [--out DIR] [--wheels DIR] [--archive FILE] [--skip-install] [--dry-run]
#
# Stages (each with its own time limit, each logged to DIR/<stage>.log), in this order:
#   env        nvidia-smi, Python, CUDA, CuPy and PyTorch versions   -> env.txt
#   install    the wheels in .whl (what the GPU image lacks) unpacked with pip --no-index
#              --no-deps --target; nnx runs from this tree; nothing is downloaded
#   parity     benchmarks/gpu_parity.py: windows (1-D, 2-D), every module's outputs and
#              gradients on cupy against NumPy, float32 tolerance; Optim(cuda_graph=True)
#              against the eager step
#   tests-cupy the whole test suite on cupy, NNX_REQUIRE_GPU=1 (a skipped GPU is a failure)
#   bench      benchmarks/run.py --backend cupy --device cuda --cuda-graph at batch 32,
#              256, 1024 against PyTorch CUDA (JSON, Markdown and reStructuredText tables)
#   train      examples/train_mnist1d_gpu.py on cupy; train-cpu the same on numpy
#   tests-torch the test suite on torch tensors on the device of NNX_TORCH_DEVICE
#   profile    benchmarks/gpu_profile.py: phase times (eager and as a graph records them),
#              CUDA graphs of nnx and PyTorch, launch costs, fused kernels
#   parity-torch  the parity check for PyTorch tensors on CUDA
#   nccl       benchmarks/gpu_nccl_check.py: nnx.distributed's NCCL engine on one GPU
#   mpi-cupy   mpiexec -n 2 python -m pytest -m mpi on cupy: two ranks sharing the GPU,
#              gradients staged through the host by MPI (needs mpi4py and mpich)
# Writes DIR/summary.txt (one line per stage: PASS / FAIL / SKIP and seconds) and exits
# non-zero if a stage failed. DIR is --out, else $OUT, else gpu-check-<UTC time>.
#
# --archive FILE: also pack DIR into FILE (.tgz), for a runner that returns few files.
# --dry-run: the same logic on a CPU-only machine (numpy stands in for cupy, torch on
# the CPU, a quick subset of the tests, one training epoch, a quick benchmark), so the
# script itself can be tested anywhere; pip only resolves (pip install --dry-run).
#
# Environment: PYTHON (default python, else python3), GPU_CHECK_BUDGET (seconds, 470),
# GPU_CHECK_BENCH_SECTIONS (default step,batch,length,memory), GPU_CHECK_BENCH_MODELS
# (default seed_cnn,mlp,mnist1d_cnn,lenet), GPU_CHECK_PYTEST_WORKERS (default 4: test
# processes sharing the GPU, with pytest-xdist; 1 runs the suites in one process),
# GPU_CHECK_SKIP (comma-separated stage names not to run, e.g. profile,mpi-cupy).
# Wheels, fetched on a machine with pip access, for a CUDA image that already has
# NumPy, CuPy, PyTorch, pytest, hypothesis, pandas, tqdm, matplotlib and scikit-learn:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       array-api-compat array-api-strict mnist1d
#   and for the nccl and mpi-cupy stages: ... mpi4py mpich nvidia-nccl-cu12
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-}"
WHEELS="$ROOT/.whl"
DRY=0
SKIP_INSTALL=0
ARCHIVE=""
PY="${PYTHON:-$(command -v python > /dev/null && echo python || echo python3)}"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --archive) ARCHIVE="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        --skip-install) SKIP_INSTALL=1; shift ;;
        -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$OUT_DIR" ] || OUT_DIR="$ROOT/gpu-check-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
cd "$ROOT"
# every stage uses this working tree's nnx, installed or not
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET:-470}"   # seconds: stages are skipped once the 8-minute budget is nearly spent
FAILED=0

if [ "$DRY" = 1 ]; then
    BACKEND=numpy; DEVICE=cpu; TORCH_DEVICE=cpu
    TEST_ARGS=(tests/test_smoke.py -q -ra)
    TRAIN_ARGS=(--backend numpy --epochs 1)
    BENCH_ARGS=(--backend numpy --quick --sections step,memory --batch-sizes 32 --rounds 3)
else
    BACKEND=cupy; DEVICE=cuda; TORCH_DEVICE=cuda
    TEST_ARGS=(tests -q -ra)
    TRAIN_ARGS=(--backend cupy --epochs 30)
    BENCH_ARGS=(--backend cupy --device cuda --batch-sizes 32,256,1024 --cuda-graph
                --models "${GPU_CHECK_BENCH_MODELS:-seed_cnn,mlp,mnist1d_cnn,lenet}"
                --sections "${GPU_CHECK_BENCH_SECTIONS:-step,batch,length,memory}")
fi

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT_DIR/gpu_check.log"; }

# stage NAME LIMIT_SECONDS COMMAND...: run with a time limit, log, record the outcome
stage() {
    local name="$1" limit="$2"; shift 2
    case ",${GPU_CHECK_SKIP:-}," in
        *",$name,"*) skip "$name" "GPU_CHECK_SKIP"; return 0 ;;
    esac
    local elapsed=$(( $(date +%s) - START ))
    if [ $(( elapsed + 10 )) -ge "$BUDGET" ]; then
        log "SKIP $name: time budget spent (${elapsed}s of ${BUDGET}s)"
        printf '%-12s SKIP (budget: counted as a failure)\n' "$name" >> "$SUMMARY"
        FAILED=1
        return 0
    fi
    [ $(( elapsed + limit )) -le "$BUDGET" ] || limit=$(( BUDGET - elapsed ))
    log "START $name (limit ${limit}s): $*"
    local t0=$(date +%s) rc
    timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    rc=$?
    local dt=$(( $(date +%s) - t0 ))
    tail -n 5 "$OUT_DIR/$name.log" | sed "s/^/    /" | tee -a "$OUT_DIR/gpu_check.log"
    if [ "$rc" = 0 ]; then
        printf '%-12s PASS %4ss\n' "$name" "$dt" >> "$SUMMARY"
    else
        [ "$rc" = 124 ] && log "$name timed out after ${limit}s"
        printf '%-12s FAIL %4ss (exit %s)\n' "$name" "$dt" "$rc" >> "$SUMMARY"
        FAILED=1
    fi
    log "END $name: exit $rc in ${dt}s"
    return 0
}

skip() {
    log "SKIP $1: $2"
    printf '%-12s SKIP (%s)\n' "$1" "$2" >> "$SUMMARY"
}

log "nnx GPU check in $ROOT -> $OUT_DIR (dry run: $DRY)"

# -- env ----------------------------------------------------------------------------
{
    echo "date: $(date -u)"
    echo "host: $(uname -a)"
    command -v nvidia-smi > /dev/null && nvidia-smi || echo "nvidia-smi: not found"
    command -v nvcc > /dev/null && nvcc --version | tail -n 2
    "$PY" --version
    "$PY" - <<'EOF'
import importlib
for name in ("numpy", "array_api_compat", "array_api_strict", "cupy", "torch", "nnx"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name}: not importable ({exc.__class__.__name__}: {exc})")
try:
    import cupy
    print("cupy.is_available():", cupy.is_available())
    if cupy.is_available():
        props = cupy.cuda.runtime.getDeviceProperties(0)
        print("GPU:", props["name"].decode(), "| driver", cupy.cuda.runtime.driverGetVersion(),
              "| runtime", cupy.cuda.runtime.runtimeGetVersion())
except Exception as exc:  # noqa: BLE001
    print("cupy:", exc)
try:
    import torch
    print("torch.cuda.is_available():", torch.cuda.is_available(), "| CUDA", torch.version.cuda)
    if torch.cuda.is_available():
        print("torch GPU:", torch.cuda.get_device_name(0))
except Exception as exc:  # noqa: BLE001
    print("torch:", exc)
EOF
} > "$OUT_DIR/env.txt" 2>&1
sed 's/^/    /' "$OUT_DIR/env.txt" | tail -n 12 | tee -a "$OUT_DIR/gpu_check.log"

# -- install ------------------------------------------------------------------------
# The wheels in WHEELS (pure-Python packages the GPU image lacks: array-api-compat,
# array-api-strict, mnist1d, ...) are unpacked into SITE without resolving anything;
# nnx itself runs from this working tree (PYTHONPATH). Nothing is downloaded.
SITE="${NNX_GPU_SITE:-/tmp/nnx-gpu-site}"
install() {
    local pipargs=(--no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE")
    [ "$DRY" = 1 ] && pipargs=(--no-index --no-deps --dry-run --only-binary=:all: --python-version 3.12 --target "$SITE")
    echo "wheels in $WHEELS:"; ls "$WHEELS"
    "$PY" -m pip install -q "${pipargs[@]}" "$WHEELS"/*.whl
}
if [ "$SKIP_INSTALL" = 1 ]; then
    skip install "--skip-install"
elif ls "$WHEELS"/*.whl > /dev/null 2>&1; then
    export -f install
    export WHEELS DRY PY ROOT SITE
    stage install 120 bash -c install
    [ "$DRY" = 1 ] || export PYTHONPATH="$PYTHONPATH:$SITE"
else
    skip install "no wheels in $WHEELS; using the installed packages"
fi
"$PY" -c "import nnx, array_api_compat; print('nnx', nnx.__version__, 'from', nnx.__file__)" \
    2>&1 | tee -a "$OUT_DIR/gpu_check.log"

# Stages run in order of importance, so that a slow machine loses the least useful ones
# to the time budget: parity (and the CUDA-graph step against the eager one), the CuPy
# test suite, the benchmark, GPU and CPU training, the PyTorch CUDA test suite, the
# profile, the PyTorch CUDA parity. The test suites run in GPU_CHECK_PYTEST_WORKERS
# processes (pytest-xdist, when installed) that share the GPU.
XDIST=()
WORKERS="${GPU_CHECK_PYTEST_WORKERS:-4}"
if [ "$DRY" = 0 ] && [ "$WORKERS" -gt 1 ] && "$PY" -c "import xdist" 2> /dev/null; then
    XDIST=(-n "$WORKERS")
fi

# -- parity: every module on the GPU against NumPy ------------------------------------
if [ "$DRY" = 1 ]; then
    stage parity 60 "$PY" benchmarks/gpu_parity.py --backend torch
else
    stage parity 90 "$PY" benchmarks/gpu_parity.py --backend cupy
fi

# -- the test suite on CuPy (pytest exits 5 when it selects no test: any non-zero exit
#    is a failure here, and NNX_REQUIRE_GPU=1 turns a skipped GPU into a failure) -------
if [ "$DRY" = 1 ]; then
    stage tests-cupy 120 env NNX_TEST_BACKENDS=numpy \
        "$PY" -m pytest "${TEST_ARGS[@]}" --junitxml "$OUT_DIR/tests-cupy.xml"
else
    stage tests-cupy 180 env NNX_TEST_BACKENDS=cupy NNX_REQUIRE_GPU=1 \
        "$PY" -m pytest "${TEST_ARGS[@]}" "${XDIST[@]}" --junitxml "$OUT_DIR/tests-cupy.xml"
fi

# -- benchmark against PyTorch ----------------------------------------------------------
stage bench 150 "$PY" benchmarks/run.py "${BENCH_ARGS[@]}" \
    --save "$OUT_DIR/bench-$BACKEND.json" --markdown "$OUT_DIR/bench-$BACKEND.md" \
    --rst "$OUT_DIR/bench-$BACKEND.rst"

# -- training on the GPU, then the same on the CPU for the accuracy comparison ---------
EXAMPLE=examples/train_mnist1d_gpu.py
HAS_OUT=0
if [ -f "$EXAMPLE" ]; then
    "$PY" "$EXAMPLE" --help 2> /dev/null | grep -q -- "--out" && HAS_OUT=1
    if [ "$HAS_OUT" = 1 ]; then
        stage train 120 "$PY" "$EXAMPLE" "${TRAIN_ARGS[@]}" --out "$OUT_DIR/train-$BACKEND"
    else
        stage train 120 "$PY" "$EXAMPLE" "${TRAIN_ARGS[@]}"
    fi
else
    skip train "$EXAMPLE not found"
fi
if [ "$DRY" = 0 ] && [ -f "$EXAMPLE" ] && [ "$HAS_OUT" = 1 ]; then
    stage train-cpu 120 "$PY" "$EXAMPLE" --backend numpy --epochs 30 --out "$OUT_DIR/train-numpy"
fi
grep -h "accuracy" "$OUT_DIR"/train*.log 2> /dev/null | tee -a "$OUT_DIR/gpu_check.log"

# -- the test suite on PyTorch CUDA tensors ----------------------------------------------
stage tests-torch 90 env NNX_TEST_BACKENDS=torch NNX_TORCH_DEVICE="$TORCH_DEVICE" \
    "$PY" -m pytest "${TEST_ARGS[@]}" "${XDIST[@]}" --junitxml "$OUT_DIR/tests-torch.xml"

# -- nnx.distributed on the GPU: NCCL on one rank, MPI host staging on two -------------
if [ "$DRY" = 0 ]; then
    stage nccl 60 "$PY" benchmarks/gpu_nccl_check.py
fi
MPIEXEC="$SITE/bin/mpiexec"   # the mpich wheel unpacked by the install stage
[ -x "$MPIEXEC" ] || MPIEXEC="$(dirname "$(command -v "$PY")")/mpiexec"
[ -x "$MPIEXEC" ] || MPIEXEC="$(command -v mpiexec || true)"
if [ "$DRY" = 0 ] && [ -n "$MPIEXEC" ]; then
    stage mpi-cupy 120 "$MPIEXEC" -n 2 env NNX_TEST_BACKENDS=cupy NNX_REQUIRE_GPU=1 \
        "$PY" -m pytest -q -p no:cacheprovider -m mpi tests/test_distributed.py \
        tests/test_distributed_training.py
elif [ "$DRY" = 0 ]; then
    skip mpi-cupy "no mpiexec (pip install mpi4py mpich)"
fi

# -- where a step's time goes on the GPU (phases, CUDA graphs, launches, fused kernels) -
if [ "$DRY" = 0 ]; then
    stage profile 90 "$PY" benchmarks/gpu_profile.py --batch-sizes 1024 \
        --json "$OUT_DIR/profile.json"
    stage parity-torch 60 "$PY" benchmarks/gpu_parity.py --backend torch --device cuda
fi

TOTAL=$(( $(date +%s) - START ))
echo "total        ${TOTAL}s" >> "$SUMMARY"
log "summary ($OUT_DIR/summary.txt):"
sed 's/^/    /' "$SUMMARY" | tee -a "$OUT_DIR/gpu_check.log"
if [ -n "$ARCHIVE" ]; then
    tar czf "$ARCHIVE" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")" \
        && log "archive: $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
fi
exit "$FAILED"
