"""Shared-prefix sampling vs ``generate(num_return_sequences=k)``: a ratio benchmark.

Builds a ~3M-parameter random-weight Llama (grm.testing) in a temporary folder, makes
one long prompt, and times k samples of exactly ``--new-tokens`` tokens each way:

  (a) TransformersEngine: the prompt is prefilled once, its cache rows copied to k samples;
  (b) ``model.generate(do_sample=True, num_return_sequences=k, min_new_tokens=m)``, which
      copies the prompt k times and prefills it k times (docs/design.md, "Engines and batching").

EOS is disabled for (a) and suppressed by ``min_new_tokens`` for (b), so both produce
k x m tokens. After one warm-up of each, every run times (a) then (b); the script prints
each run and the median ratio (b)/(a). The target on the 2-core CPU is >= 2.0.

Run::

    python benchmarks/bench_shared_prefix.py                 # CPU, 2 threads, 5 runs
    python benchmarks/bench_shared_prefix.py --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing
from grm.engine import GenerationRequest
from grm.testing import build_tiny_model
from grm.transformers_engine import TransformersEngine


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up")
    p.add_argument("--k", type=int, default=8, help="samples per prompt")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=2600)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.5, help="the paper's sampling temperature")
    return p.parse_args()


def long_prompt(tokenizer, length: int) -> tuple[int, ...]:
    """``length`` token ids of varied text (numbered sentences, so the BPE cannot collapse them)."""
    text = " ".join(f"Response {i % 7} uses {i} words, so it fails criterion {i % 3}; the answer is {i * 3}."
                    for i in range(length))
    ids = tokenizer(text, add_special_tokens=False).input_ids[:length]
    assert len(ids) == length, "prompt text too short for --prompt-tokens"
    return tuple(ids)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_engine(engine: TransformersEngine, request: GenerationRequest) -> float:
    start = time.perf_counter()
    [samples] = engine.generate([request])
    sync(engine.model.device)
    elapsed = time.perf_counter() - start
    assert [len(c.token_ids) for c in samples] == [request.max_new_tokens] * request.n
    return elapsed


def time_generate(engine: TransformersEngine, request: GenerationRequest) -> float:
    device = engine.model.device
    ids = torch.tensor([request.prompt_ids], device=device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = engine.model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=request.temperature,
            top_p=1.0, top_k=0, num_return_sequences=request.n, max_new_tokens=request.max_new_tokens,
            min_new_tokens=request.max_new_tokens, pad_token_id=engine.tokenizer.pad_token_id)
    sync(device)
    elapsed = time.perf_counter() - start
    assert out.shape == (request.n, len(request.prompt_ids) + request.max_new_tokens)
    return elapsed


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(tmp, arch="llama", hidden=args.hidden, layers=args.layers, heads=args.heads)
        loaded = TransformersEngine.load(tmp, device=args.device)
    # EOS off for (a): every sample runs the full budget, as min_new_tokens forces for (b).
    engine = TransformersEngine(loaded.model, loaded.tokenizer, str(path), loaded.revision, eos_token_ids=set())
    params = sum(p.numel() for p in engine.model.parameters())
    request = GenerationRequest(long_prompt(engine.tokenizer, args.prompt_tokens), n=args.k,
                                temperature=args.temperature, max_new_tokens=args.new_tokens, seed=0)
    print(f"model: llama, {params / 1e6:.2f}M parameters, {engine.model.dtype}, device {engine.model.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"prompt {args.prompt_tokens} tokens, k={args.k}, {args.new_tokens} new tokens per sample")
    time_engine(engine, request), time_generate(engine, request)  # warm-up
    times = []  # (shared prefix, num_return_sequences) seconds per run
    for run in range(1, args.runs + 1):
        times.append((time_engine(engine, request), time_generate(engine, request)))
        print(f"run {run}: shared prefix {times[-1][0]:.3f}s  num_return_sequences {times[-1][1]:.3f}s  "
              f"ratio {times[-1][1] / times[-1][0]:.2f}x")
    ratios = [repeated / shared for shared, repeated in times]
    # Other work on the machine only slows runs down: the fastest of each is a second view.
    fastest = min(t[1] for t in times) / min(t[0] for t in times)
    print(f"fastest run of each: {fastest:.1f}x")
    print(f"median speedup (num_return_sequences / shared prefix): {statistics.median(ratios):.1f}x")


if __name__ == "__main__":
    main()
