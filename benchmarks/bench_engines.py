"""What the service costs on top of a remote engine: the same samples through ``grm serve
--engine-url`` and straight to the engine.

Starts llama.cpp's server (``scripts/build_llama_server.sh``) on the bundled GRM converted by
``grm export-gguf``, and ``grm serve --engine-url`` on it (cache off). Each run times, one
after the other:

  (a) service: N requests (k, max_new_tokens, temperature 0.5, one seed per request) sent at
      once through ``AsyncRewardClient``; the service renders, tokenizes, shuffles, calls the
      engine, parses and votes;
  (b) plain client: the very /v1/completions bodies the service sends for those requests
      (same token ids, n, seeds, budgets), posted at once with aiohttp, replies only read.

It prints the medians of the runs and the ratio (a)/(b) (goal: at most 1.10), plus the
tokens each side got back (equal seeds: equal samples, so equal work).

Run::

    python benchmarks/bench_engines.py                    # 32 requests, k=4, 256 tokens, 5 runs
    python benchmarks/bench_engines.py --parallel 8 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing
from grm.default_model import PACKAGED  # noqa: E402
from grm.engine import GenerationRequest  # noqa: E402
from grm.judge import GenerativeRewardModel  # noqa: E402
from grm.seeds import mix_seed  # noqa: E402
from grm.tasks.generate import generate_tasks  # noqa: E402
from grm.types import SamplingOptions, ScoreInput  # noqa: E402
from services.client import AsyncRewardClient  # noqa: E402
from services.remote_engine import RemoteConfig, RemoteEngine  # noqa: E402
from services.testing.llama_server import LlamaServer, gguf_of, llama_cpp_dir  # noqa: E402
from services.testing.serve_process import ServeProcess  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("-k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--parallel", type=int, default=8, help="llama-server slots (-np)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama-server threads")
    return p.parse_args()


def workload(n: int) -> list[ScoreInput]:
    return [ScoreInput(t.query, t.responses) for t in generate_tasks(n, seed=11, split="test")]


async def via_service(address: str, items: list[ScoreInput], sampling: list[SamplingOptions]) -> int:
    async with AsyncRewardClient(address, timeout_s=600) as client:
        replies = await asyncio.gather(*(client.score(it.query, list(it.responses), sampling=s, cache_policy="bypass")
                                         for it, s in zip(items, sampling)))
    return sum(r.result.completion_tokens for r in replies)


def bodies(engine: RemoteEngine, items: list[ScoreInput], sampling: list[SamplingOptions]) -> list[dict]:
    """The completion bodies the service sends for these requests (the judge's own plans)."""
    judge = GenerativeRewardModel.load(str(PACKAGED), engine=engine)
    out = []
    for item, s in zip(items, sampling):
        for prompt in judge.plan(item, s).prompts:
            request = GenerationRequest(prompt.ids, n=len(prompt.samples), temperature=s.temperature,
                                        max_new_tokens=s.max_new_tokens, seed=mix_seed(s.seed, prompt.samples[0]))
            n = request.n
            out.append(engine.payload(request, n, request.seed if n > 1 else mix_seed(request.seed, 0)))
    return out


async def plain(url: str, payloads: list[dict], tokenizer) -> int:
    """Post every body at once; the generated tokens, counted as the service counts them."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def post(body: dict) -> list[str]:
            async with session.post(url + "/v1/completions", json=body) as r:
                reply = await r.json()
            return [c["text"] for c in reply["choices"]]
        texts = [t for ts in await asyncio.gather(*(post(b) for b in payloads)) for t in ts]
    return sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)


def main() -> None:
    args = parse_args()
    build = llama_cpp_dir()
    llama = LlamaServer(gguf_of(PACKAGED, build / "src" / "convert_hf_to_gguf.py"), parallel=args.parallel,
                        threads=args.threads, slot_context=2048).start()
    serve = ServeProcess(PACKAGED, "--engine-url", llama.url, "--no-cache", "--threads", "1",
                         "--metrics-port", "-1", "--max-k", "64")
    try:
        serve.wait_for_line("ready:", 300)
        from transformers import AutoTokenizer
        engine = RemoteEngine.connect(RemoteConfig((llama.url,)), AutoTokenizer.from_pretrained(PACKAGED),
                                      eos_token_ids=[5])
        items = workload(args.requests)
        sampling = [SamplingOptions(k=args.k, temperature=0.5, max_new_tokens=args.max_new_tokens, seed=i)
                    for i in range(len(items))]
        payloads = bodies(engine, items, sampling)
        engine.close()  # its tokenizer stays, to count the plain side's tokens
        print(f"{len(items)} requests, k={args.k}, {args.max_new_tokens} new tokens max: {len(payloads)} "
              f"completion calls; llama-server -np {args.parallel} -t {args.threads}; load {os.getloadavg()[0]:.1f}")
        times = {"service": [], "plain": []}
        for run in range(args.runs):
            start = time.perf_counter()
            tokens_s = asyncio.run(via_service(serve.address, items, sampling))
            times["service"].append(time.perf_counter() - start)
            start = time.perf_counter()
            tokens_p = asyncio.run(plain(llama.url, payloads, engine.tokenizer))
            times["plain"].append(time.perf_counter() - start)
            print(f"run {run + 1}: service {times['service'][-1]:.2f} s ({tokens_s} tokens), "
                  f"plain {times['plain'][-1]:.2f} s ({tokens_p} tokens)")
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"median: service {med['service']:.2f} s, plain {med['plain']:.2f} s, "
              f"service/plain {med['service'] / med['plain']:.3f} (goal <= 1.10)")
    finally:
        serve.stop()
        llama.stop()


if __name__ == "__main__":
    main()
