#!/usr/bin/env bash
# The in-process engine's decode speed on one GPU, in one run of under 8 minutes (one H200).
#
# Random-weight models (no download), 1,812-token prompts, 256 new tokens, EOS off:
#   1. Llama-8B shape, k=1 and k=8: the engine before (eager loop) and after (static loop:
#      compiled step and CUDA graphs; engine-graphs: graphs without compiling the step,
#      the loop before compiling) and HF eager generate. Targets: engine-static <= 8 ms/step at k=1, and
#      its latency at k=8 <= 1.3x that at k=1 (the "latency ... relative to 1x1" lines).
#   2. SmolLM2-135M shape, k=1: engine-static <= 3 ms/step.
#   3. Llama-8B shape, 16 inputs x k=8: engine-static >= 5x HF eager generate in tokens/s
#      (HF eager takes about 30 s a run).
#   4. SmolLM2-135M shape: HF generate with a static cache (it compiles itself on CUDA;
#      given 100 s at most).
# Everything printed is also written to $OUT/gpu_decode.txt when OUT is set.
#
#   benchmarks/gpu_decode.sh                       # on the GPU machine
#   SIZE=tiny DEVICE=cpu benchmarks/gpu_decode.sh  # a quick run of the same steps on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
LOG=${OUT:-/tmp}/gpu_decode.txt
if [ "${SIZE:-full}" = tiny ]; then
  BIG=tiny SMALL=tiny PROMPT=48 NEW=16 RUNS=1 WIDE=4x8
else
  BIG=llama-8b SMALL=smollm2-135m PROMPT=1812 NEW=256 RUNS=2 WIDE=16x8
fi
bench() { python benchmarks/bench_decode.py --device "$DEVICE" --prompt-tokens "$PROMPT" --new-tokens "$NEW" "$@" 2>&1 \
  | grep -v -e FutureWarning -e 'return forward_call' | tee -a "$LOG" || echo "failed: bench $*" | tee -a "$LOG"; }
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" | tee -a "$LOG"
bench --shape "$BIG" --cases 1x1,1x8 --variants engine-static,engine-graphs,engine-eager,hf-eager --runs "$RUNS"
bench --shape "$SMALL" --cases 1x1 --variants engine-static,engine-graphs,engine-eager,hf-eager --runs "$RUNS"
bench --shape "$BIG" --cases "$WIDE" --variants engine-static,engine-graphs,hf-eager --runs 2
timeout 100 bash -c "$(declare -f bench); LOG=$LOG DEVICE=$DEVICE PROMPT=$PROMPT NEW=$NEW bench --shape $SMALL --cases 1x1 \
  --variants hf-static --runs 2" || echo "hf-static (compiled generate) did not finish within 100 s" | tee -a "$LOG"
