#!/usr/bin/env bash
# One script for a GPU machine: install the wheel built on the development
# machine (run the device tool with carry=["dist"] after
# `bash tools/build_wheel.sh dist`), so the run also proves the stable-ABI
# claim on that machine's torch; then the CUDA tests from outside the source
# tree, compute-sanitizer (memcheck + racecheck) on a small case, and the
# benchmarks. Without a wheel in dist/ it builds one for this GPU.
# Results go to ${OUT:-benchmarks/results}. Budget: about 7 minutes on one GPU; every step has a
# timeout, and those after the install add up to 600 s (the device tool's limit for one command).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)   # absolute: the tests run from another folder
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" PIP_ROOT_USER_ACTION=ignore MPLBACKEND=Agg
export METAFAST_REQUIRE_EXTENSION=1 METAFAST_WITH_CUDA=1
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/gpu_check.log"; }
status=0

log "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)," \
    "torch $(python -c 'import torch; print(torch.__version__)'), python $(python -V 2>&1)"
wheel=$(ls dist/metafast-*.whl 2>/dev/null | head -1)
if [ -n "$wheel" ] && python -m pip install -q --no-deps --force-reinstall "$wheel" >"$OUT/install.log" 2>&1; then
  log "installed the prebuilt wheel $(basename "$wheel")"
else
  log "no installable wheel in dist/ (see install.log): building one for this GPU"
  export TORCH_CUDA_ARCH_LIST=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  if ! python -m pip install -q --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1; then
    log "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1
  fi
fi
# Run from a folder outside the repository so that `import metafast` is the installed package.
outside=$(mktemp -d)
cp -r tests "$outside/tests"
cd "$outside"
python -c "import metafast, json; print(json.dumps(metafast.build_info()))" | tee "$OUT/build_info.json"

log "CUDA tests"
timeout 150 python -m pytest -q -p no:cacheprovider -m cuda tests --junitxml="$OUT/cuda_tests.xml" 2>&1 \
  | tail -25 | tee "$OUT/cuda_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

for tool in memcheck racecheck; do
  log "compute-sanitizer $tool"
  timeout 90 compute-sanitizer --tool "$tool" --error-exitcode 3 python "$repo/benchmarks/sanitizer_case.py" \
    >"$OUT/sanitizer_$tool.txt" 2>&1
  rc=$?; tail -3 "$OUT/sanitizer_$tool.txt"; [ $rc -eq 0 ] || { log "$tool rc=$rc"; status=1; }
done

log "benchmarks"
# The paper's sinusoid (T = 25) and a large meta-batch (T = 200), 5 steps, second order.
timeout 120 python "$repo/benchmarks/bench_sinusoid.py" --device cuda --quick --problems sinusoid --tasks 25 200 \
  --steps 5 --order 2 --out "$OUT/sinusoid_cuda.json" 2>&1 | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "bench_sinusoid failed"; status=1; }
timeout 90 python "$repo/benchmarks/bench_omniglot.py" --device cuda --quick --out "$OUT/omniglot_cuda.json" 2>&1 | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "bench_omniglot failed"; status=1; }
timeout 60 python "$repo/benchmarks/bench_rl.py" --device cuda --iterations 1 --out "$OUT/rl_cuda.json" 2>&1 | tail -12
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "bench_rl failed"; status=1; }
log "done, status $status"
exit $status
