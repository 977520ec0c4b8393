"""Decode speed of the in-process engine, its eager loop against its static one, beside HF ``generate``.

Builds a random-weight Llama of a named shape (no download; ``--shape``), draws random
prompts of ``--prompt-tokens`` tokens, and for each case ``INPUTSxK`` (``--cases``)
samples ``--new-tokens`` tokens per row with EOS switched off (temperature 0.7, one seed
per input), four ways, interleaved run by run so a shared machine slows them alike:

- ``engine-eager``: ``TransformersEngine`` with ``static_decode=False`` (the Hugging Face
  forward once per token; the engine as it decoded before the static loop);
- ``engine-static``: the same engine decoding through ``grm.static_decode`` (on CUDA: a
  compiled step replayed as CUDA graphs);
- ``engine-graphs``: the static loop with CUDA graphs but its step not compiled (CUDA only);
- ``engine-compiled``: the static loop with its step compiled (the CUDA default; on a CPU
  an option, compiled once per call shape; asked for by name only);
- ``hf-eager``: ``model.generate(num_return_sequences=k)`` with its dynamic cache;
- ``hf-static``: the same with ``cache_implementation="static"`` (on CUDA ``generate``
  compiles its forward for that cache by itself; on a CPU it runs eagerly).

The engines run without a prefix cache, so every run prefills its prompts anew. Per run it
prints wall seconds, CPU seconds (the machine may be shared), tokens per second (rows x new
tokens / wall) and milliseconds per decode step (timed between steps, so the prefill is
left out). Then medians per variant, tokens/s ratios to ``engine-eager`` and ``hf-eager``,
and the weight-read floor: the bytes of the weights a step reads over the device's read
bandwidth (measured with a large reduction, or ``--bandwidth-gbs``), as a fraction of the
step time (1.0 = the step reads the weights once at full speed and does nothing else).

Run::

    python benchmarks/bench_decode.py                                    # CPU: SmolLM2-135M shape, 2x8 rows
    python benchmarks/bench_decode.py --variants engine-eager,engine-static --runs 5
    python benchmarks/bench_decode.py --device cuda --shape llama-8b --cases 1x1,1x8,16x8 \\
        --prompt-tokens 1812 --new-tokens 256                            # see benchmarks/gpu_decode.sh
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing
from grm.engine import GenerationRequest  # noqa: E402
from grm.static_decode import StaticDecoder  # noqa: E402
from grm.testing import build_tokenizer  # noqa: E402
from grm.transformers_engine import TransformersEngine  # noqa: E402

SHAPES = {  # LlamaConfig fields of named models
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "llama-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, tie_word_embeddings=True),
}
VARIANTS = ("engine-eager", "engine-static", "engine-graphs", "engine-compiled", "hf-eager", "hf-static")
TEMPERATURE = 0.7


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", help="default: bfloat16 on CUDA, float32 on a CPU")
    p.add_argument("--cases", default="2x8", help="comma-separated INPUTSxK, e.g. 1x1,1x8,16x8")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "engine-compiled"),
                   help=f"comma-separated, of {', '.join(VARIANTS)} (default: all but engine-compiled, which on "
                        "CUDA is what engine-static does and on a CPU compiles for minutes)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per variant, after one short warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--bandwidth-gbs", type=float, help="device read bandwidth, GB/s (default: measured)")
    args = p.parse_args()
    args.variants = args.variants.split(",")
    if unknown := set(args.variants) - set(VARIANTS):
        p.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    try:
        args.cases = [tuple(int(x) for x in case.split("x")) for case in args.cases.split(",")]
    except ValueError:
        p.error(f"--cases must look like 2x8,16x8, got {args.cases!r}")
    return args


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def read_bandwidth(device: torch.device) -> float:
    """Bytes per second a large reduction reads (median of 5)."""
    x = torch.ones(1 << (28 if device.type == "cuda" else 26), device=device)  # 1 GiB / 256 MiB of float32
    times = []
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        x.sum().item()
        times.append(time.perf_counter() - start)
    return x.numel() * x.element_size() / statistics.median(times[1:])


def step_bytes(model) -> int:
    """Bytes of the weights one decode step reads: all but an untied input embedding (only looked up)."""
    embed = model.get_input_embeddings().weight
    tied = embed.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    return sum(p.numel() * p.element_size() for p in model.parameters() if tied or p is not embed)


class StepClock:
    """Times between decode steps: ``tick(steps)`` after ``steps`` more steps since the last tick."""

    def __init__(self, device: torch.device):
        self.device, self.stamps, self.steps = device, [], 0

    def tick(self, steps: int) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())
        self.steps += steps if len(self.stamps) > 1 else 0

    def ms_per_step(self) -> float:
        return 1000 * (self.stamps[-1] - self.stamps[0]) / max(self.steps, 1)


def run_engine(engine: TransformersEngine, prompts, k: int, new_tokens: int, clock: StepClock, every: int):
    def wanted() -> bool:  # asked of every request every ``every`` steps by both loops; the first one ticks
        clock.tick(every)
        return True

    requests = [GenerationRequest(p, n=k, temperature=TEMPERATURE, max_new_tokens=new_tokens, seed=j,
                                  wanted=wanted if j == 0 else (lambda: True))
                for j, p in enumerate(prompts)]
    engine.generate(requests)


def run_hf(model, prompts, k: int, new_tokens: int, clock: StepClock, static: bool) -> None:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Tick(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            clock.tick(1)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    ids = torch.tensor(prompts, device=model.device)
    extra = {"cache_implementation": "static"} if static else {}
    model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=TEMPERATURE, top_k=0,
                   num_return_sequences=k, max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                   pad_token_id=0, stopping_criteria=StoppingCriteriaList([Tick()]), **extra)


def measure(variant: str, runners: dict, device: torch.device, new_tokens: int) -> dict[str, float]:
    clock = StepClock(device)
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    runners[variant](new_tokens, clock)
    sync(device)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "ms_step": clock.ms_per_step()}


def bench_case(model, engines, prompts, k: int, args, floor_ms: float) -> dict[str, dict[str, float]]:
    """Time every variant on one case; print the runs and the medians; return the medians."""
    every = 4  # the engine asks ``wanted`` every WANTED_EVERY steps
    runners = {
        "engine-eager": lambda m, c: run_engine(engines[False], prompts, k, m, c, every),
        "engine-static": lambda m, c: run_engine(engines[True], prompts, k, m, c, every),
        "engine-graphs": lambda m, c: run_engine(engines["graphs"], prompts, k, m, c, every),
        "engine-compiled": lambda m, c: run_engine(engines["compiled"], prompts, k, m, c, every),
        "hf-eager": lambda m, c: run_hf(model, prompts, k, m, c, static=False),
        "hf-static": lambda m, c: run_hf(model, prompts, k, m, c, static=True),
    }
    rows = len(prompts) * k
    print(f"\n== {len(prompts)} inputs x k={k} = {rows} rows, {args.prompt_tokens}-token prompts, "
          f"{args.new_tokens} new tokens, EOS off ==", flush=True)
    for v in args.variants:  # warm-up: kernels, graphs, compiled code, packed weights
        # the static loop captures one graph per budget bucket: warm it at the timed budget
        measure(v, runners, model.device, args.new_tokens if v.startswith("engine-") else min(args.new_tokens, 16))
    results: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
    for run in range(args.runs):
        for v in args.variants:
            r = measure(v, runners, model.device, args.new_tokens)
            results[v].append(r)
            print(f"run {run + 1} {v:14s} wall {r['wall']:7.2f} s  cpu {r['cpu']:7.2f} s  "
                  f"{rows * args.new_tokens / r['wall']:8.1f} tokens/s  {r['ms_step']:8.2f} ms/step", flush=True)
    med = {v: {key: statistics.median(r[key] for r in rs) for key in ("wall", "cpu", "ms_step")}
           for v, rs in results.items()}
    tps = {v: rows * args.new_tokens / m["wall"] for v, m in med.items()}
    print(f"medians of {args.runs} ({len(prompts)}x{k}):")
    for v, m in med.items():
        ratios = "  ".join(f"x{tps[v] / tps[base]:.2f} vs {base}" for base in ("engine-eager", "hf-eager")
                           if base in tps and base != v)
        print(f"  {v:14s} {tps[v]:8.1f} tokens/s  {m['ms_step']:8.2f} ms/step  wall {m['wall']:7.2f} s  "
              f"floor {floor_ms / m['ms_step']:.3f}  {ratios}")
    for name, engine in (("engine-static", engines[True]), ("engine-graphs", engines["graphs"]),
                         ("engine-compiled", engines["compiled"])):
        static = engine._static
        if static is not None and name in args.variants and (static.device.type == "cuda" or static.compile_error):
            print(f"  {name} CUDA graphs: {'on' if static.graphs else 'off: ' + str(static.capture_error)}; "
                  f"compiled step: {'on' if static.compile_step else 'off' + (': ' + static.compile_error if static.compile_error else '')}")
    return med


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = build_model(args.shape, device, dtype)
    tokenizer = build_tokenizer()  # any tokenizer will do: ids past its vocabulary decode to nothing
    engines = {static: TransformersEngine(model, tokenizer, model_id=args.shape, eos_token_ids=set(),
                                          static_decode=static) for static in (False, True)}
    engines["graphs"] = TransformersEngine(model, tokenizer, model_id=args.shape, eos_token_ids=set())
    engines["graphs"]._static = StaticDecoder(model, check_every=4, compile_step=False)
    engines["compiled"] = TransformersEngine(model, tokenizer, model_id=args.shape, eos_token_ids=set())
    engines["compiled"]._static = StaticDecoder(model, check_every=4, compile_step=True)
    bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else read_bandwidth(device)
    floor_ms = 1000 * step_bytes(model) / bandwidth
    print(f"{args.shape} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {dtype}) on {device}, "
          f"{torch.get_num_threads()} threads; a step reads {step_bytes(model) / 1e6:.0f} MB of weights, "
          f"{bandwidth / 1e9:.1f} GB/s -> floor {floor_ms:.2f} ms/step")
    generator = torch.Generator().manual_seed(1)
    medians = {}
    for inputs, k in args.cases:
        prompts = [tuple(torch.randint(0, SHAPES[args.shape]["vocab_size"], (args.prompt_tokens,),
                                       generator=generator).tolist()) for _ in range(inputs)]
        medians[f"{inputs}x{k}"] = bench_case(model, engines, prompts, k, args, floor_ms)
    if len(medians) > 1:  # latency as the rows grow, relative to the first case
        first = next(iter(medians))
        print(f"\nlatency (median wall) per case, and relative to {first}:")
        for v in args.variants:
            print(f"  {v:14s} " + "  ".join(f"{case} {m[v]['wall']:7.2f} s (x{m[v]['wall'] / medians[first][v]['wall']:.2f})"
                                            for case, m in medians.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
