"""The client flags of the commands that talk to a running service: TLS files and a token.

    grm score --target host:50051 --tls-ca ca.pem --token "$TOKEN" --query ... --response ...
    GRM_TOKEN=... grm info --target host:50051 --tls-ca ca.pem
"""

from __future__ import annotations

import argparse

from services.client import ClientTLS


def add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-ca", help="with --target: PEM CA of the server's certificate (turns on TLS)")
    p.add_argument("--tls-cert", help="with --target: PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", help="with --target: PEM key of --tls-cert")
    p.add_argument("--token", help="with --target: bearer token (default: $GRM_TOKEN)")


def client_options(args: argparse.Namespace) -> dict:
    """RewardClient keyword arguments from the flags."""
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = ClientTLS(args.tls_ca, args.tls_cert, args.tls_key)
    return {"tls": tls, "token": args.token}
