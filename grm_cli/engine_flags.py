"""The flags that put ``grm serve`` on remote engine servers, and the loader they select.

    grm serve --model path/to/checkpoint --engine-url http://10.0.0.1:8000,http://10.0.0.2:8000
    grm serve --model Qwen/Qwen2.5-7B-Instruct --engine-url http://vllm:8000/v1 --revision 2025-06-01

``--model`` then gives only the tokenizer, the chat template and the judge template (the
checkpoint's ``grm_template.json`` when it has one); the named servers sample. Without
``--engine-url`` the checkpoint runs in-process, as before.
"""

from __future__ import annotations

import argparse
from typing import Callable

from grm.default_model import default_meta_rm_path, default_model_path
from grm.judge import GenerativeRewardModel
from grm.pretrained import resolve_model
from grm_cli.common import judge_loader, say
from services.remote_engine import RemoteConfig, RemoteEngine


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine-url", metavar="URL[,URL...]",
                   help="sample on these OpenAI-compatible completion servers (vLLM, SGLang, llama.cpp, "
                        "TGI) instead of in-process, each given as its base URL with or without /v1; "
                        "--model gives the tokenizer and templates")
    p.add_argument("--engine-model", help="the served model's name (default: the only one the server lists)")
    p.add_argument("--revision", default="",
                   help="your name for the weights behind the served model, part of the cache key: "
                        "change it when they change under the same name")
    p.add_argument("--text-prompts", action="store_true",
                   help="send rendered text where a server refuses token-id prompts (the server then "
                        "tokenizes responses itself, so special-token strings in them are not neutralized)")
    p.add_argument("--engine-read-timeout", type=float, default=30.0, metavar="S",
                   help="seconds an engine's reply may go silent once it has begun before that URL counts "
                        "as stalled (default 30; the wait for a reply to begin is bounded by the deadline)")
    p.add_argument("--engine-passes", type=int, default=4, metavar="N",
                   help="engine passes in flight at once on remote engines, so one slow call does not hold "
                        "the others (default 4; the in-process engine runs one)")


def remote_config(args: argparse.Namespace) -> RemoteConfig | None:
    """The remote engine the flags ask for; None for the in-process engine."""
    if not args.engine_url:
        for flag, value in (("--engine-model", args.engine_model), ("--revision", args.revision),
                            ("--text-prompts", args.text_prompts)):
            if value:
                raise ValueError(f"{flag} needs --engine-url (the in-process engine names its weights by content)")
        return None
    return RemoteConfig(tuple(args.engine_url.split(",")), model=args.engine_model, revision=args.revision,
                        text_prompts=args.text_prompts, read_timeout_s=args.engine_read_timeout)


def engine_passes(args: argparse.Namespace) -> int:
    """Passes the scheduler may run at once: one in-process (it owns the device), else --engine-passes."""
    if args.engine_passes < 1:
        raise ValueError(f"--engine-passes must be >= 1, got {args.engine_passes}")
    return args.engine_passes if args.engine_url else 1


def serve_loader(args: argparse.Namespace) -> Callable[[], GenerativeRewardModel]:
    """The judge loader for ``grm serve``: remote engines when --engine-url is given."""
    config = remote_config(args)
    if config is None:
        return judge_loader(args)

    def load() -> GenerativeRewardModel:
        from transformers import AutoTokenizer, GenerationConfig

        path = resolve_model(args.model) if args.model else str(default_model_path())
        meta = args.meta_rm or (None if args.model else default_meta_rm_path())
        tokenizer = AutoTokenizer.from_pretrained(path)
        eos = {tokenizer.eos_token_id} - {None}
        try:
            found = GenerationConfig.from_pretrained(path).eos_token_id
            eos |= set(found if isinstance(found, list) else [found]) - {None}
        except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
            pass
        say(f"checking the engines at {', '.join(config.urls)} against {path} ...")
        engine = RemoteEngine.connect(config, tokenizer, max_context=_tokenizer_limit(tokenizer),
                                      eos_token_ids=sorted(eos))
        served = engine.served
        say(f"engine: {served.name} ({'token-id' if served.token_prompts else 'text'} prompts, "
            f"{'n per call' if served.supports_n else 'one call per sample'}, context {engine.max_context})")
        return GenerativeRewardModel.load(path, meta_rm=str(meta) if meta else None,
                                          template=getattr(args, "template", None),
                                          device=getattr(args, "device", None), engine=engine)
    return load


def _tokenizer_limit(tokenizer) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10_000_000 else None
