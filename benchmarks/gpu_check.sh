#!/usr/bin/env bash
# One script for a GPU machine (the device tool runs it as one command):
# install the wheel built on the development machine (carry=["dist"] after
# `bash tools/build_wheel.sh dist`), so the run also proves the stable-ABI
# claim on that machine's torch; the CUDA tests from outside the source tree;
# compute-sanitizer memcheck, initcheck (caching allocator off, so overruns
# inside cached blocks are seen) and racecheck; the benchmarks. Without a
# wheel in dist/ it builds one for this GPU.
#
# Output: $OUT/gpu_check.log (the summary) and $OUT/gpu_check_results.tar.gz
# (every other file): the device tool brings back a few files only.
# Budget: the step timeouts below add up to 470 s, within the device tool's
# 600 s for one command, leaving room for the install.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PY="${PYTHON:-python3}"             # the GPU machine has python3, not python
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)              # absolute: the tests run from another folder
work=$(mktemp -d)                    # every result file, packed at the end
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" PIP_ROOT_USER_ACTION=ignore PIP_NO_INDEX=1 MPLBACKEND=Agg
export METAFAST_REQUIRE_EXTENSION=1 METAFAST_WITH_CUDA=1
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/gpu_check.log"; }
pack() { tar -czf "$OUT/gpu_check_results.tar.gz" -C "$work" . ; log "packed $(ls "$work" | wc -l) files"; }
trap pack EXIT
status=0

log "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)," \
    "torch $($PY -c 'import torch; print(torch.__version__)'), python $($PY -V 2>&1)"
wheel=$(ls dist/metafast-*.whl 2>/dev/null | head -1)
if [ -n "$wheel" ] && $PY -m pip install -q --no-deps --force-reinstall "$wheel" >"$work/install.log" 2>&1; then
  log "installed the prebuilt wheel $(basename "$wheel")"
else
  log "no installable wheel in dist/ (see install.log): building one for this GPU"
  export TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  if ! timeout 300 $PY -m pip install -q --no-build-isolation --no-deps . >"$work/build.log" 2>&1; then
    log "BUILD FAILED"; tail -40 "$work/build.log" | tee -a "$OUT/gpu_check.log"; exit 1
  fi
fi
# Run from a folder outside the repository so that `import metafast` is the installed package.
outside=$(mktemp -d)
cp -r tests "$outside/tests"
cd "$outside"
$PY -c "import metafast, json; print(json.dumps(metafast.build_info()))" | tee "$work/build_info.json"

step() {  # step NAME TIMEOUT COMMAND...: run, keep its output, log failures
  local name=$1 limit=$2; shift 2
  log "$name"
  timeout "$limit" "$@" >"$work/$name.txt" 2>&1
  local rc=$?
  tail -15 "$work/$name.txt" | tee -a "$OUT/gpu_check.log"
  [ $rc -eq 0 ] || { log "$name FAILED rc=$rc"; status=1; }
}

step cuda_tests 120 $PY -m pytest -q -p no:cacheprovider -m cuda tests --junitxml="$work/cuda_tests.xml"
for tool in memcheck initcheck racecheck; do
  nocache=1; [ "$tool" = racecheck ] && nocache=0
  step "sanitizer_$tool" 50 env PYTORCH_NO_CUDA_MEMORY_CACHING=$nocache \
    compute-sanitizer --tool "$tool" --error-exitcode 3 $PY "$repo/benchmarks/sanitizer_case.py"
done
# The paper's sinusoid (T = 25) and a large meta-batch (T = 200), 5 steps, second order.
# compile-func / metafast-compile compile once per shape (tens of seconds): the longest step.
step bench_sinusoid 120 $PY "$repo/benchmarks/bench_sinusoid.py" --device cuda --quick --problems sinusoid \
  --tasks 25 200 --steps 5 --order 2 --out "$work/sinusoid_cuda.json"
step bench_omniglot 50 $PY "$repo/benchmarks/bench_omniglot.py" --device cuda --quick --configs 5w1s-T32-1step \
  5w1s-T32-5step --methods eager vmap batched batched-torch batched-loop --out "$work/omniglot_cuda.json"
step bench_rl 30 $PY "$repo/benchmarks/bench_rl.py" --device cuda --iterations 1 --out "$work/rl_cuda.json"
log "done, status $status"
exit $status
