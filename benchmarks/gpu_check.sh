#!/usr/bin/env bash
# One script for a GPU machine: build for this GPU only, run the CUDA tests,
# compute-sanitizer (memcheck + racecheck) on a small case, and the benchmarks.
# Results go to ${OUT:-benchmarks/results}. Budget: under 6 minutes on one GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" METAFAST_WITH_CUDA=1 PIP_ROOT_USER_ACTION=ignore MPLBACKEND=Agg
cap=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST="$cap"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/gpu_check.log"; }
status=0

log "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader), arch $cap"
log "build"
if ! python -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  log "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1
fi
python -c "import metafast, json; print(json.dumps(metafast.build_info()))" | tee "$OUT/build_info.json"

log "CUDA tests"
timeout 150 python -m pytest -q -m cuda tests --junitxml="$OUT/cuda_tests.xml" 2>&1 | tail -25 | tee "$OUT/cuda_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

for tool in memcheck racecheck; do
  log "compute-sanitizer $tool"
  timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 3 python benchmarks/sanitizer_case.py \
    >"$OUT/sanitizer_$tool.txt" 2>&1
  rc=$?; tail -3 "$OUT/sanitizer_$tool.txt"; [ $rc -eq 0 ] || { log "$tool rc=$rc"; status=1; }
done

log "benchmarks"
timeout 120 python benchmarks/bench_sinusoid.py --device cuda --out "$OUT/sinusoid_cuda.json" 2>&1 | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "bench_sinusoid failed"; status=1; }
timeout 90 python benchmarks/bench_omniglot.py --device cuda --quick --out "$OUT/omniglot_cuda.json" 2>&1 | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "bench_omniglot failed"; status=1; }
log "done, status $status"
exit $status
