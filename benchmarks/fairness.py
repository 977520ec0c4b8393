"""Fairness: a polite caller's latency alone and beside a flooder, on one ``grm serve``.

Two callers by bearer token. The polite one sends one Score at a time (one input, k
samples); the flooder keeps ``--calls`` ScoreBatch calls of ``--items`` inputs in flight,
waiting out each refusal's retry hint as the project's clients do, so it stays within its
limits (``--max-sequences-per-caller``). The polite caller is measured alone, then with the
flood running, in the same run on the same server. Printed: its median latency and success
in both phases and their ratio (the goal: at most 3x, and every call answered), and the
flooder's answers.

    python benchmarks/fairness.py                        # the bundled GRM
    python benchmarks/fairness.py --model path/to/ckpt --k 4 --calls 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).absolute().parents[1]))  # run from a checkout without installing

from grm.default_model import default_model_path
from services.testing.flood import Flooder, polite_calls, summary, write_tokens


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(default_model_path()), help="checkpoint (default: the bundled GRM)")
    p.add_argument("--k", type=int, default=2, help="samples per input, both callers")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--calls", type=int, default=4, help="the flooder's concurrent ScoreBatch calls")
    p.add_argument("--items", type=int, default=8, help="inputs per flooder call")
    p.add_argument("--polite-calls", type=int, default=15, help="the polite caller's calls per phase")
    p.add_argument("--max-sequences-per-caller", type=int, default=32)
    p.add_argument("--max-batch-sequences", type=int, default=0,
                   help="the scheduler's cap per pass (default: k, one input a pass)")
    return p.parse_args()


def start_server(args, tokens: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "grm_cli", "serve", "--model", args.model, "--port", "0", "--metrics-port", "-1",
           "--no-cache", "--token-file", str(tokens), "--max-sequences-per-caller", str(args.max_sequences_per_caller),
           "--max-batch-sequences", str(args.max_batch_sequences or args.k), "--max-batch-items", str(args.items),
           "--max-wait-ms", "5", "--grace", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = None
    for line in proc.stdout:
        if line.startswith("serving on "):
            address = line.split()[2]
        if line.startswith("ready:"):
            return proc, address
    raise RuntimeError(f"grm serve did not start (exit code {proc.wait()})")


def main() -> int:
    args = parse_args()
    options = dict(k=args.k, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        proc, address = start_server(args, write_tokens(Path(tmp) / "tokens"))
        try:
            polite_calls(address, 2, tag="warm-up", **options)
            solo = polite_calls(address, args.polite_calls, **options)
            with Flooder(address, calls=args.calls, items=args.items, **options) as flood:
                flooded = polite_calls(address, args.polite_calls, tag="flooded", **options)
        finally:
            proc.terminate()
            proc.wait(60)
    (solo_s, solo_ok), (flooded_s, flooded_ok) = summary(solo), summary(flooded)
    print(f"server: --max-sequences-per-caller {args.max_sequences_per_caller}, --max-batch-sequences "
          f"{args.max_batch_sequences or args.k}; polite: Score of 1 input, k={args.k}, {args.max_new_tokens} "
          f"new tokens; flooder: {args.calls} x ScoreBatch of {args.items} inputs")
    print(f"{'polite caller':16s} {'median latency':>15s} {'success':>8s}")
    print(f"{'alone':16s} {solo_s:14.3f}s {solo_ok:8.0%}")
    print(f"{'beside flooder':16s} {flooded_s:14.3f}s {flooded_ok:8.0%}")
    print(f"ratio flooded / alone: {flooded_s / solo_s:.2f}x (goal: at most 3x, success 100%)")
    print(f"flooder's answers: {dict(flood.codes)}")
    return 0 if flooded_s <= 3 * solo_s and solo_ok == flooded_ok == 1.0 else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
