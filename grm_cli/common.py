"""What several subcommands share: model flags, reading an input, loading the judge, printing.

Printers never write untrusted text raw: a response or a judgment may hold terminal
control sequences (``ESC [ 2 J`` clears the screen, OSC 8 forges links, U+202E reverses
what follows), so ``printable`` escapes them before anything reaches the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

import grm.defaults as defaults
from grm.default_model import default_meta_rm_path, default_model_path
from grm.judge import GenerativeRewardModel
from grm.types import ScoreInput, ScoreResult
from services.security import TLSFiles, check_bind

# Bidirectional overrides and isolates: shown as escapes, since they reorder the text after them.
_BIDI = {0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069}


def say(message: str) -> None:
    """Progress for the user, on stderr (stdout carries results)."""
    print(message, file=sys.stderr, flush=True)


def printable(text: str, *, keep_newlines: bool = True) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\x07``, ``\\u202e``); newlines and
    tabs kept when ``keep_newlines``. Everything else, non-ASCII letters included, is kept."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in "\n\t" and keep_newlines:
            out.append(ch)
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif code in _BIDI:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint path, hub id, .gguf file, LoRA adapter folder or base name "
                   "(smollm2-135m-instruct); default: the bundled GRM")
    p.add_argument("--meta-rm", help="meta RM checkpoint (needed for --aggregation meta_voting)")


def add_sampling_args(p: argparse.ArgumentParser, prefix: str = "", note: str = "", k: int = defaults.K) -> None:
    """The judge's k, temperature and max_new_tokens flags (``-k``, ``--temperature``,
    ``--max-new-tokens``; ``--PREFIXk`` ... with a prefix), defaulting to ``grm.defaults``."""
    p.add_argument(f"--{prefix}k" if prefix else "-k", type=int, default=k,
                   help=f"judgments sampled per input{note} (default {k})")
    p.add_argument(f"--{prefix}temperature", type=float, default=defaults.TEMPERATURE,
                   help=f"sampling temperature{note}; 0 is greedy (default {defaults.TEMPERATURE:g})")
    p.add_argument(f"--{prefix}max-new-tokens", type=int, default=defaults.MAX_NEW_TOKENS,
                   help=f"tokens per judgment{note} (default {defaults.MAX_NEW_TOKENS})")


def add_server_safety_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The flags every command that serves a port shares: TLS, tokens, the bind rule, host names."""
    net = p.add_argument_group("network safety")
    net.add_argument("--tls-cert", help="PEM certificate chain: TLS on the served ports")
    net.add_argument("--tls-key", help="PEM private key of --tls-cert")
    net.add_argument("--allow-expired-cert", action="store_true",
                     help="serve with an expired --tls-cert (refused by default; clients will refuse it too)")
    net.add_argument("--token-file", help="bearer tokens, one 'NAME TOKEN' a line; reread on SIGHUP")
    net.add_argument("--insecure", action="store_true",
                     help="allow a non-loopback --host without TLS and tokens")
    net.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                     help="a name browsers may reach this server by, besides its addresses and --host "
                          "(repeatable; other names are refused against DNS rebinding)")
    return net


def server_tls(args: argparse.Namespace, client_ca: str | None = None) -> TLSFiles | None:
    """The TLS files the flags name, checked (ValueError names the flag's file and the fault)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("give --tls-cert and --tls-key together")
    if client_ca and args.tls_cert is None:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    if args.tls_cert is None:
        return None
    return TLSFiles(args.tls_cert, args.tls_key, client_ca, allow_expired=args.allow_expired_cert)


def check_binds(args: argparse.Namespace, tls: TLSFiles | None, **hosts: str | None) -> None:
    """The bind rule (``services.security.check_bind``) for each served host, named by its flag."""
    for flag, host in hosts.items():
        if host is not None:
            check_bind(host, tls, args.token_file, args.insecure, "--" + flag.replace("_", "-"))


def load_input(args: argparse.Namespace) -> ScoreInput:
    """Read the query/conversation and responses from flags or a JSON file.

    The file holds ``{"query": str}`` or ``{"conversation": [{"role", "content"}...]}``,
    plus ``"responses": [str, ...]`` and optionally ``"principles"`` and ``"reference"``.
    """
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            data = json.load(f)
        conversation = data.get("conversation") or data.get("messages") or data.get("query")
        if not conversation or not data.get("responses"):
            raise SystemExit(f"{args.file}: needs 'query' or 'conversation', and 'responses'")
        return ScoreInput(conversation, data["responses"], data.get("principles"), data.get("reference"))
    if not args.query or not args.response:
        raise SystemExit("give --query and at least one --response, or --file")
    return ScoreInput(args.query, args.response, args.principles, args.reference)


def judge_loader(args: argparse.Namespace) -> Callable[[], GenerativeRewardModel]:
    """A function that loads the judge named by --model/--meta-rm/--template (default: bundled)."""
    def load() -> GenerativeRewardModel:
        if args.model:
            path, meta = args.model, args.meta_rm
        else:
            say("locating the default GRM (the bundled one, else one built once into $GRM_HOME) ...")
            path, meta = str(default_model_path()), args.meta_rm or default_meta_rm_path()
        start = time.perf_counter()
        say(f"loading {path} ...")
        judge = GenerativeRewardModel.load(path, meta_rm=str(meta) if meta else None,
                                           template=getattr(args, "template", None),
                                           device=getattr(args, "device", None),
                                           prefix_cache_mb=getattr(args, "prefix_cache_mb", 512))
        say(f"loaded {path} in {time.perf_counter() - start:.1f} s")
        return judge
    return load


def set_threads(threads: int) -> None:
    """Torch CPU threads: ``threads``, or by default one less than the CPUs (at least 1).

    The spare core runs the event loop, tokenization and the clients. Measured on a 2-core
    machine: with 2 torch threads the engine thread's passes took 20-28 s instead of 1 s
    whenever other processes were busy, as OpenMP's barriers wait on a core that another
    process holds.
    """
    import torch  # heavy: only the commands that run a model pay for it

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))


def format_result(item: ScoreInput, result: ScoreResult, show: bool) -> str:
    """A terminal-readable summary: one line per response, then (with show) each judgment."""
    lines = [f"{result.num_valid}/{len(result.judgments)} valid samples, "
             f"{result.num_used} used ({result.aggregation})"]
    for i, response in enumerate(item.responses):
        reward = "unscored" if result.rewards[i] is None else f"{result.rewards[i]:.2f}"
        spread = "" if result.spread[i] is None else f" +-{result.spread[i]:.2f}"
        mark = " <- best" if result.best == i else ""
        preview = response if len(response) <= 60 else response[:57] + "..."
        expected = f"  expected {result.expected_rewards[i]:.2f}" if result.expected_rewards else ""
        lines.append(f"  response {i + 1}: reward {reward}{spread}  votes {result.vote_sums[i]}{expected}"
                     f"{mark}  | {preview!r}")
    if result.invalid_reasons:
        lines.append("  invalid samples: " + ", ".join(f"{r} x{c}" for r, c in result.invalid_reasons.items()))
    if show:
        for j, judgment in enumerate(result.judgments):
            order = " ".join(str(p + 1) for p in judgment.permutation)
            status = f"scores {list(judgment.scores)}" if judgment.valid else f"invalid: {judgment.reason}"
            lines += ["", f"--- sample {j + 1} (responses shown in order {order}; {status}) ---",
                      "principles:", _indent(judgment.principles or "(none)"),
                      "critique:", _indent(judgment.critique or "(none)")]
            if not judgment.valid:
                lines += ["raw text:", _indent(judgment.text[:2000] or "(empty)")]
    return printable("\n".join(lines))


def format_info(info) -> str:
    """A running service's GetInfo, one field a line."""
    limits = ", ".join(f"{k}={v}" for k, v in info.limits.items())
    d = info.default_sampling
    return printable("\n".join([
        f"model:     {info.model_id}", f"revision:  {info.revision}",
        f"template:  {info.template_version}", f"context:   {info.max_context} tokens",
        f"meta RM:   {info.meta_rm_id or '(none: meta voting unavailable)'}",
        f"cache:     {info.cache_backend} ({info.cache_state})",
        f"defaults:  k={d.k} temperature={d.temperature} top_p={d.top_p} max_new_tokens={d.max_new_tokens}",
        f"limits:    {limits}", f"server:    {info.server_version}"]))


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())
