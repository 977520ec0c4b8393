"""Opening a client channel to the reward service: plaintext or TLS, one replica or several,
and the bearer token sent with every call.

``open_channel`` is the one way every client of the project (``services.client``, the
adapters, the benchmarks) reaches the service: it raises the message size limits, spreads
calls over a ``host:port,host:port`` list (services/targets.py) and reads TLS files from
``GRM_TLS_CA``/``GRM_TLS_CERT``/``GRM_TLS_KEY`` when no ``ClientTLS`` is given.

    channel = open_channel("127.0.0.1:50051", DEFAULT_MAX_MESSAGE_BYTES, ClientTLS(root_ca="ca.pem"))
    metadata = auth_metadata(None)     # (("authorization", "Bearer ..."),) from $GRM_TOKEN, or ()
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.targets import balanced_target

DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


@dataclass(frozen=True)
class ClientTLS:
    """PEM files for a TLS channel: the CA that signed the server's certificate (None: the
    system's roots), and for mutual TLS the client's own certificate and key."""

    root_ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("ClientTLS needs both cert and key for a client certificate, or neither")

    @classmethod
    def from_env(cls) -> "ClientTLS | None":
        """From ``GRM_TLS_CA``, ``GRM_TLS_CERT`` and ``GRM_TLS_KEY`` (None when none is set), so
        that reward functions configured by a framework's YAML reach a TLS service too."""
        ca, cert, key = (os.environ.get(f"GRM_TLS_{name}") or None for name in ("CA", "CERT", "KEY"))
        return cls(ca, cert, key) if ca or cert else None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(read(self.root_ca), read(self.key), read(self.cert))


def open_channel(target: str, max_message_bytes: int, tls: ClientTLS | None, asynchronous: bool = False):
    """A plaintext or TLS channel, sync or ``grpc.aio``, with the message size limits raised.
    ``target`` may list several replicas, ``host:port,host:port`` (services/targets.py);
    ``tls`` None reads ``ClientTLS.from_env()``."""
    module = grpc.aio if asynchronous else grpc
    target, spread = balanced_target(target)
    options = channel_options(max_message_bytes) + spread
    tls = tls or ClientTLS.from_env()
    if tls is None:
        return module.insecure_channel(target, options=options)
    return module.secure_channel(target, tls.credentials(), options=options)


def auth_metadata(token: str | None) -> tuple:
    """The ``authorization`` metadata for ``token``, else for ``$GRM_TOKEN``; () without either."""
    token = token or os.environ.get("GRM_TOKEN")
    return (("authorization", f"Bearer {token}"),) if token else ()
