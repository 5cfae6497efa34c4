#!/usr/bin/env bash
# Everything that needs the GPU (the lent machine is costly to start), in two parts that each fit a 10-minute call.
# Usage on the GPU machine, from the repo root:  bash benchmarks/gpu_suite.sh OUTDIR [tests|energy|training|all]
# Issue 17 (one 10-minute call each, not in `all`): rehearsal (kd_32b_1b rehearsed end to end at 2M/2M tokens: likely
# over 10 min on one H200, see benchmarks/rehearsal.py), or the same split over two calls on the same warm machine:
# rehearsal-teacher then rehearsal-rest (the run waits in runs/bench-rehearsal, git-ignored, between them);
# rehearsal-estimate (estimate vs a 5x longer rehearsal, ~8 min), rehearsal-13b (the 13B student's fit, ~3 min).
# Issues 17 + 19 in two back-to-back calls on one warm machine: session-a (energy_coverage, then the 2M teacher)
# and session-b (the rest of the 2M rehearsal, then the default calibration against it: estimate_accuracy
# --measured; torch's recompile log of both goes to OUTDIR). estimates: `distill-kit estimate` of the manifests
# named in $ESTIMATES (default: all real ones), each as OUTDIR/estimate_<manifest>.json.
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
# Each prints timestamped progress lines and rewrites its JSON after every phase (a cut-off run keeps what it had).
long() { read -ra cmd <<< "$1"; timeout "$2" python -m "benchmarks.${cmd[0]}" "${cmd[@]:1}" 2>&1 | grep -v "━" | tail -40; }
if [[ $part == rehearsal ]]; then long rehearsal 590; fi
if [[ $part == rehearsal-teacher ]]; then rm -rf runs/bench-rehearsal; long "rehearsal --phase teacher" 590; fi
if [[ $part == rehearsal-rest ]]; then long "rehearsal --phase rest" 590; fi
if [[ $part == rehearsal-estimate ]]; then long estimate_accuracy 570; fi
if [[ $part == rehearsal-13b ]]; then long student_13b 570; fi
if [[ $part == session-a ]]; then
  long energy_coverage 170
  rm -rf runs/bench-rehearsal; long "rehearsal --phase teacher" 410
fi
if [[ $part == session-b ]]; then
  export TORCH_LOGS=recompiles TORCH_LOGS_OUT="$out/recompiles_rehearsal_rest.log"
  long "rehearsal --phase rest" 330
  cp runs/bench-rehearsal/loops.json "$out/rehearsal_loops.json"
  export TORCH_LOGS_OUT="$out/recompiles_calibration.log"
  long "estimate_accuracy --measured runs/bench-rehearsal/run" 250
  unset TORCH_LOGS TORCH_LOGS_OUT
fi
if [[ $part == estimates ]]; then
  # The 13B students do not fit one H200 without activation checkpointing (benchmarks/results/student_13b.json);
  # their trained-token calibration is halved (200k, ~8 optimizer steps) to keep a 13B estimate near 5 minutes.
  extra() { case $1 in *_13b) echo "--set student.activation_checkpointing=true --set rehearsal.student_tokens=200000";; esac; }
  df -h /tmp | tail -1
  # Every estimate of this machine (runs/ stays between back-to-back calls of a warm machine) is offered for reuse:
  # an identical teacher or evaluation stage measured on these same GPUs is taken from it (docs/estimate.md).
  keep=runs/estimates; mkdir -p "$keep"
  for m in ${ESTIMATES:-kd_32b_1b kd_32b_7b kd_32b_13b sft_32b_1b sft_32b_7b sft_32b_13b baseline_sft_1b baseline_sft_7b baseline_sft_13b eval_olmo2_1b}; do
    echo "[$(date +%T)] estimate $m"
    rm -rf /tmp/distill-kit-estimate-*  # a calibration killed by an older kit left its run folder (51 GB at 13B)
    # The calibration runs in runs/estimates/cal-<manifest>: one cut off by the call's limit continues (--resume)
    # in the next call of the same warm machine. Another manifest's cut calibration is dropped (a 13B's is ~55 GB).
    cal="$keep/cal-$m"; for d in "$keep"/cal-*; do [[ -e $d && $d != "$cal" ]] && rm -rf "$d"; done
    resume=(); [[ -d $cal ]] && resume=(--resume) && echo "continuing the cut calibration in $cal"
    read -ra args <<< "$(extra "$m")"
    reuse=(); for f in "$keep"/estimate_*.json; do [[ -e $f ]] && reuse+=(--reuse "$f"); done
    # Limits measured on one H200: a 13B optimizer step ~24 s (8 steps + compile + eval, ~330 s; 300 s cut one),
    # a 32B generation calibration 5 batches of 64 at ~100 ms a decode step.
    case $m in sft_*) limit=590;; *_13b) limit=570;; *) limit=300;; esac
    limit=${ESTIMATE_TIMEOUT:-$limit}
    timeout "$limit" python -m distill_kit estimate "$m" "${args[@]}" "${reuse[@]}" --run-dir "$cal" "${resume[@]}" \
      --json "$out/estimate_$m.json" 2>&1 | grep -v "━" | tail -25
    python -m benchmarks.stamp_estimate "$out/estimate_$m.json" distill-kit estimate "$m" "${args[@]}" "${reuse[@]}" \
      && cp "$out/estimate_$m.json" "$keep/" && rm -rf "$cal"
  done
  echo "[$(date +%T)] estimates done"
fi
