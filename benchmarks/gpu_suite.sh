#!/usr/bin/env bash
# Everything that needs the GPU (the lent machine is costly to start), in two parts that each fit a 10-minute call.
# Usage on the GPU machine, from the repo root:  bash benchmarks/gpu_suite.sh OUTDIR [tests|energy|training|all]
set -uo pipefail
out=${1:-benchmarks/results}
part=${2:-all}
mkdir -p "$out"
export BENCH_OUT="$out" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total --format=csv > "$out/nvidia-smi.txt"
run() { timeout 300 python -m "benchmarks.$1" 2>&1 | tail -4; }
if [[ $part == tests || $part == all ]]; then
  python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -s 2>&1 | tail -40 > "$out/gpu_tests.txt"
  tail -5 "$out/gpu_tests.txt"
fi
if [[ $part == energy || $part == all ]]; then run energy_agreement; run energy_edges; run energy_overhead; fi
if [[ $part == training || $part == all ]]; then run cache_throughput; run kd_step; run logit_cache; fi
