"""``grm inspect``: the judgment inspector on saved files, without a model.

    grm inspect report.json judgments.jsonl                  # a grm eval report and its judgments
    grm inspect --metrics runs/grpo/metrics.jsonl            # a GRPO run, refreshing while it goes on
    grm inspect report.json judgments.jsonl --target 127.0.0.1:50051   # plus "Try it" through a service
    grm inspect --metrics m.jsonl --host 0.0.0.0 --tls-cert c.pem --tls-key k.pem --token-file t.txt

Files are told apart by content (a ``.json`` report, judgment lines, metrics lines); each
judgments file belongs to the report before it (or the only one). Beyond loopback the
bind rule of ``grm serve`` holds: TLS and tokens, or ``--insecure``. The parseable
``inspector on http://HOST:PORT/inspect`` line goes to stdout; SIGTERM or Ctrl-C stops.
"""

from __future__ import annotations

import argparse
import signal
import threading

from grm_cli.common import add_server_safety_args, check_binds, server_tls
from services.http_reward import RewardHTTPServer
from services.inspector import Inspector
from services.inspector.sources import EvalSource, RunSource, SourceError, kind_of
from services.security import TokenFile

NAME = "inspect"
HELP = "browse eval reports, their judgments and training runs in a web page"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``grm inspect``: the files, where to serve, and an optional service for Try it."""
    p.add_argument("files", nargs="*", help="grm eval reports (.json) and judgments files (.jsonl), "
                                            "or training metrics files (metrics.jsonl)")
    p.add_argument("--metrics", action="append", default=[], help="a GRPO metrics.jsonl to plot (repeatable)")
    p.add_argument("--data", help="the evaluation data, when the path in the report no longer works")
    p.add_argument("--target", help="HOST:PORT of a running grm serve, for the Try it form")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port; 0 picks a free one (default 8765)")
    add_server_safety_args(p)


def load_sources(files: list[str], metrics: list[str], data: str | None) -> tuple[list[EvalSource], list[RunSource]]:
    """The reports (each with the judgments file that follows it) and the runs the arguments name."""
    reports: list[tuple[str, str | None]] = []
    runs = list(metrics)
    judgments: list[str] = []
    for path in files:
        kind = kind_of(path)
        if kind == "report":
            reports.append((path, None))
        elif kind == "metrics":
            runs.append(path)
        elif reports and reports[-1][1] is None:
            reports[-1] = (reports[-1][0], path)
        else:
            judgments.append(path)  # named before its report
    for path in judgments:
        free = [i for i, (_, j) in enumerate(reports) if j is None]
        if not free:
            raise SourceError(f"{path}: a judgments file needs its grm eval report (report.json) beside it")
        reports[free[0]] = (reports[free[0]][0], path)
    return [EvalSource.load(r, j, data) for r, j in reports], [RunSource(m) for m in runs]


def reload(tokens: TokenFile | None) -> None:
    """SIGHUP: reread the token file, if there is one (a bad file keeps the tokens in use)."""
    try:
        if tokens is not None:
            tokens.reload()
    except (OSError, ValueError) as e:
        print(f"token file not reloaded, the old tokens stay: {e}", flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        tls = server_tls(args)
        check_binds(args, tls, host=args.host)
        tokens = TokenFile(args.token_file) if args.token_file else None
        reports, runs = load_sources(args.files, args.metrics, args.data)
        http = RewardHTTPServer(None, args.host, args.port, inspector=Inspector(None, args.target, reports, runs),
                                ssl_context=tls.ssl_context() if tls else None, tokens=tokens,
                                allowed_hosts=args.allowed_host)
    except (SourceError, OSError, ValueError) as e:
        raise SystemExit(f"grm inspect: {e}") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload(tokens))
    http.start()
    host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    print(f"inspector on {'https' if tls else 'http'}://{host}:{http.port}/inspect", flush=True)
    while not stop.wait(0.5):  # short waits, so the signal handler runs promptly
        pass
    http.stop()
    return 0
