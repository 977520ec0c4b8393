"""The in-process engine's prefix cache on vs off: prompt tokens computed and wall time.

Loads the GRM that ``grm serve`` uses by default (the bundled checkpoint, or ``--model``)
once, and wraps the same weights in two engines: one with the prefix cache that
``TransformersEngine.load`` turns on, one without. A judge on each, with the default
template (``--template`` for another), scores the same ``--calls`` inputs (3 responses
each, k=4, ``--max-new-tokens`` 64, temperature 0.5, one seed per input), one Score call
after another, as requests reach a server one by one.

Every run empties the cache first (so the first call pays for the template head), times
both sides in alternating order, and records the prompt tokens each engine actually ran
through the model (``engine.stats["prefill_tokens"]``). It prints each run, the medians
side by side, and the ratios off/on (targets: >= 3x fewer tokens, >= 2x less time). It
also checks that the judgments are identical token for token: sampled ones in every run,
and greedy ones (temperature 0) in one more pass.

Run::

    python benchmarks/bench_prefix_cache.py                  # bundled GRM, 32 calls, 3 runs
    python benchmarks/bench_prefix_cache.py --batched        # the 32 inputs as one score_batch
    python benchmarks/bench_prefix_cache.py --model path/to/ckpt --threads 8 --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing
from grm.default_model import default_model_path  # noqa: E402
from grm.judge import GenerativeRewardModel  # noqa: E402
from grm.templates import load_template  # noqa: E402
from grm.transformers_engine import TransformersEngine  # noqa: E402
from grm.types import SamplingOptions, ScoreInput  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint (default: the bundled GRM)")
    p.add_argument("--template", default="grm-default-v2", help="judge template, by version or path")
    p.add_argument("--calls", type=int, default=32, help="Score calls per side per run")
    p.add_argument("-k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--batched", action="store_true", help="score the inputs in one score_batch per side")
    return p.parse_args()


def make_inputs(n: int) -> list[ScoreInput]:
    """N distinct inputs like the bundled GRM's tasks, three responses each."""
    return [ScoreInput(f"Write exactly {i % 7 + 3} words about the number {i}, ending with a question mark.",
                       [f"Is the number {i} fine?", f"{i} {i} {i}.", "WHY IS IT SO?"]) for i in range(n)]


def run(judge: GenerativeRewardModel, inputs, sampling, batched: bool) -> tuple[float, int, list]:
    """(seconds, prompt tokens computed, every judgment's token ids) for all inputs."""
    before = judge.engine.stats["prefill_tokens"]
    start = time.perf_counter()
    if batched:
        samples = judge.sample([judge.plan(it, s) for it, s in zip(inputs, sampling)])
    else:
        samples = [judge.sample([judge.plan(it, s)])[0] for it, s in zip(inputs, sampling)]
    elapsed = time.perf_counter() - start
    tokens = [[s.completion.token_ids for s in per_input] for per_input in samples]
    return elapsed, judge.engine.stats["prefill_tokens"] - before, tokens


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    path = args.model or str(default_model_path())
    on_engine = TransformersEngine.load(path)
    if on_engine.prefix_cache is None:
        print("this model's cache layers are not plain full-attention ones: no prefix cache")
        return 1
    off_engine = TransformersEngine(on_engine.model, on_engine.tokenizer, on_engine.model_id, on_engine.revision)
    template = load_template(args.template)
    on, off = GenerativeRewardModel(on_engine, template), GenerativeRewardModel(off_engine, template)
    inputs = make_inputs(args.calls)
    sampling = [SamplingOptions(k=args.k, temperature=0.5, max_new_tokens=args.max_new_tokens, seed=i)
                for i in range(len(inputs))]
    lengths = [len(p.ids) for p in off.plan(inputs[0], sampling[0]).prompts]
    print(f"model {path}, template {template.version}: {args.calls} {'inputs in one batch' if args.batched else 'calls'}"
          f", N=3, k={args.k}, max_new_tokens={args.max_new_tokens}, {args.threads} threads; first input's "
          f"distinct prompts {lengths} tokens; load average {os.getloadavg()[0]:.1f}", flush=True)
    run(off, inputs[:2], sampling[:2], args.batched)  # warm-up both
    run(on, inputs[:2], sampling[:2], args.batched)
    times, tokens, same = {"off": [], "on": []}, {"off": [], "on": []}, []
    for r in range(1, args.runs + 1):
        on_engine.prefix_cache.clear()
        outputs = {}
        for name in (("off", "on") if r % 2 else ("on", "off")):
            t, n, outputs[name] = run(off if name == "off" else on, inputs, sampling, args.batched)
            times[name].append(t)
            tokens[name].append(n)
        same.append(sum(a == b for a, b in zip(outputs["off"], outputs["on"])))
        print(f"run {r}: prompt tokens computed off {tokens['off'][-1]:,} on {tokens['on'][-1]:,} "
              f"({tokens['off'][-1] / tokens['on'][-1]:.2f}x); wall off {times['off'][-1]:.2f} s on "
              f"{times['on'][-1]:.2f} s ({times['off'][-1] / times['on'][-1]:.2f}x); inputs with identical "
              f"judgments {same[-1]}/{len(inputs)}", flush=True)
    greedy = [SamplingOptions(k=args.k, temperature=0.0, max_new_tokens=args.max_new_tokens, seed=i)
              for i in range(len(inputs))]
    _, _, greedy_off = run(off, inputs, greedy, args.batched)
    _, _, greedy_on = run(on, inputs, greedy, args.batched)
    greedy_same = sum(a == b for a, b in zip(greedy_off, greedy_on))
    med = {name: (statistics.median(tokens[name]), statistics.median(times[name])) for name in ("off", "on")}
    token_ratio, time_ratio = med["off"][0] / med["on"][0], med["off"][1] / med["on"][1]
    print(f"median prompt tokens computed: off {med['off'][0]:,.0f}, on {med['on'][0]:,.0f}, "
          f"ratio {token_ratio:.2f}x (target >= 3)")
    print(f"median wall time: off {med['off'][1]:.2f} s, on {med['on'][1]:.2f} s, ratio {time_ratio:.2f}x "
          f"(target >= 2)")
    print(f"identical judgments, sampled (temperature 0.5, same seeds): {min(same)}/{len(inputs)} inputs in "
          f"the worst run; greedy: {greedy_same}/{len(inputs)}")
    print(f"prefix cache: {on_engine.prefix_cache.stats()}; load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
