"""Who may call, over what: TLS files, bearer tokens read from a file, and the bind rule.

- ``TLSFiles``: a certificate and key (PEM), and optionally a client CA that turns on
  mutual TLS. They give grpc's server credentials and an ``ssl.SSLContext`` for the HTTP
  port, so both ports speak the same TLS.
- ``TokenFile``: one token a line as ``NAME TOKEN`` (``#`` starts a comment). A caller
  sends ``authorization: Bearer TOKEN`` (gRPC metadata or the HTTP header); ``identify``
  returns the token's NAME, which logs, metrics and per-caller limits use, or None. Every
  stored token is compared in constant time (``hmac.compare_digest``), so the time taken
  tells nothing about which prefix matched. ``reload`` rereads the file (``grm serve`` calls
  it on SIGHUP): a token removed from the file stops working at once.
- ``check_bind``: a server reachable from other machines must have TLS and tokens, or the
  operator must say ``--insecure`` out loud.

Example::

    tokens = TokenFile("tokens.txt")            # "trainer-a 3f9c...\\ntrainer-b 77aa..."
    tokens.identify("Bearer 3f9c...")           # "trainer-a"
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)
LOOPBACK_NAMES = {"localhost"}  # addresses are checked by ipaddress


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the server's certificate chain and key, and a CA that client certificates
    must chain to (``client_ca``: mutual TLS; without it any client may connect)."""

    cert: str
    key: str
    client_ca: str | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key", "client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLSFiles.{name}: no such file {path!r}")

    def grpc_credentials(self) -> grpc.ServerCredentials:
        chain = (Path(self.key).read_bytes(), Path(self.cert).read_bytes())
        root = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials([chain], root_certificates=root,
                                           require_client_auth=self.client_ca is not None)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class TokenFile:
    """Bearer tokens by name, read from ``path``; thread-safe, reloadable."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._tokens: tuple[tuple[str, bytes], ...] = ()
        self.reload()

    def reload(self) -> int:
        """Reread the file; returns how many tokens it holds. A bad file keeps the old tokens."""
        tokens = parse_tokens(self.path.read_text(encoding="utf-8"), str(self.path))
        with self._lock:
            self._tokens = tokens
        log.info("read %d tokens from %s", len(tokens), self.path)
        return len(tokens)

    def identify(self, authorization: str | None) -> str | None:
        """The name of the token in an ``authorization`` value (``Bearer TOKEN``), else None."""
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        offered = value.strip().encode()
        found = None
        for name, token in self._tokens:  # no early exit: every token costs the same time
            if hmac.compare_digest(offered, token):
                found = name
        return found


def parse_tokens(text: str, where: str = "tokens") -> tuple[tuple[str, bytes], ...]:
    """``NAME TOKEN`` lines into pairs; names and tokens must be unique, tokens >= 16 chars."""
    pairs, names, values = [], set(), set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{where}:{number}: expected 'NAME TOKEN', got {len(parts)} fields")
        name, token = parts
        if len(token) < 16:
            raise ValueError(f"{where}:{number}: the token of {name!r} is {len(token)} characters; use at least 16")
        if name in names or token in values:
            raise ValueError(f"{where}:{number}: {name!r} repeats a name or a token")
        names.add(name)
        values.add(token)
        pairs.append((name, token.encode()))
    if not pairs:
        raise ValueError(f"{where}: holds no token")
    return tuple(pairs)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tls: TLSFiles | None, token_file: str | None, insecure: bool) -> None:
    """Refuse to serve beyond this machine without TLS and tokens, unless ``insecure``."""
    if is_loopback(host) or insecure or (tls is not None and token_file is not None):
        return
    missing = " and ".join(flag for flag, given in (("--tls-cert/--tls-key", tls), ("--token-file", token_file))
                           if given is None)
    raise ValueError(f"binding {host} serves other machines: give {missing}, or --insecure to serve "
                     "without them")
