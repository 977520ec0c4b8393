#!/usr/bin/env bash
# The in-process engine's decode speed on one GPU, in one run of under 8 minutes (one H200).
#
# Random-weight models (no download), 1,812-token prompts, 256 new tokens, EOS off:
#   1. Llama-8B shape, k=1 and k=8: the engine before (eager loop) and after (static loop,
#      CUDA graphs) and HF eager generate. Targets: engine-static <= 8 ms/step at k=1, and
#      its latency at k=8 <= 1.3x that at k=1 (the "latency ... relative to 1x1" lines).
#   2. Llama-8B shape, 16 inputs x k=8: engine-static >= 5x HF eager generate in tokens/s.
#   3. SmolLM2-135M shape, k=1: engine-static <= 3 ms/step; then HF generate with a static
#      cache (it compiles itself on CUDA; given 100 s at most).
#
#   benchmarks/gpu_decode.sh                       # on the GPU machine
#   SIZE=tiny DEVICE=cpu benchmarks/gpu_decode.sh  # a quick run of the same steps on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
if [ "${SIZE:-full}" = tiny ]; then
  BIG=tiny SMALL=tiny PROMPT=48 NEW=16 RUNS=1 WIDE=4x8
else
  BIG=llama-8b SMALL=smollm2-135m PROMPT=1812 NEW=256 RUNS=3 WIDE=16x8
fi
bench() { python benchmarks/bench_decode.py --device "$DEVICE" --prompt-tokens "$PROMPT" --new-tokens "$NEW" "$@"; }
bench --shape "$BIG" --cases 1x1,1x8 --variants engine-eager,engine-static,hf-eager --runs "$RUNS"
bench --shape "$BIG" --cases "$WIDE" --variants engine-static,hf-eager --runs 2
bench --shape "$SMALL" --cases 1x1 --variants engine-eager,engine-static,hf-eager --runs "$RUNS"
timeout 100 bash -c "$(declare -f bench); DEVICE=$DEVICE PROMPT=$PROMPT NEW=$NEW bench --shape $SMALL --cases 1x1 \
  --variants hf-static --runs 2" || echo "hf-static (compiled generate) did not finish within 100 s"
