"""Who may call, over what: TLS files, bearer tokens read from a file, and the bind rule.

- ``TLSFiles``: a certificate and key (PEM), and optionally a client CA that turns on
  mutual TLS. They give grpc's server credentials and an ``ssl.SSLContext`` for the HTTP
  port, so both ports speak the same TLS.
- ``TokenFile``: one token a line as ``NAME TOKEN``; a line whose first character (after
  blanks) is ``#`` is a comment, so a ``#`` inside a token is part of it. A caller
  sends ``authorization: Bearer TOKEN`` (gRPC metadata or the HTTP header); ``identify``
  returns the token's NAME, which logs, metrics and per-caller limits use, or None. Every
  stored token is compared in constant time (``hmac.compare_digest``), so the time taken
  tells nothing about which prefix matched. ``reload`` rereads the file (``grm serve`` calls
  it on SIGHUP): a token removed from the file stops working at once.
- ``TokenGate``: a gRPC interceptor that refuses a call without a known token on its
  metadata alone, before its message is read, so a caller without a token never makes
  the server receive or parse a large request.
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
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc

log = logging.getLogger(__name__)
LOOPBACK_NAMES = {"localhost"}  # addresses are checked by ipaddress
FRONT_END_METADATA = "grm-front-end"  # see vouch_for
_FRONT_END_SECRET = secrets.token_hex(16)  # known only to this process
EXPIRY_WARNING_DAYS = 14  # a certificate closer than this to its end is warned about at start


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the server's certificate chain and key, and a CA that client certificates
    must chain to (``client_ca``: mutual TLS; without it any client may connect).

    Checked on construction, each error naming the field, the file and what is wrong: a file
    that is not PEM, a key that does not belong to the certificate, an expired certificate
    (refused unless ``allow_expired``). One that ends within ``EXPIRY_WARNING_DAYS`` is
    logged as a warning."""

    cert: str
    key: str
    client_ca: str | None = None
    allow_expired: bool = False  # serve with an expired certificate (clients will refuse it)

    def __post_init__(self) -> None:
        for name in ("cert", "key", "client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLSFiles.{name}: no such file {path!r}")
        self._check_expiry(self.days_left())
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.cert, self.key)
        except ssl.SSLError as e:
            what = (f"does not belong to the certificate {self.cert!r}" if "KEY_VALUES_MISMATCH" in str(e)
                    else f"is not a PEM private key ({e})")
            raise ValueError(f"TLSFiles.key: {self.key!r} {what}") from None
        if self.client_ca is not None:
            try:
                ssl.create_default_context().load_verify_locations(self.client_ca)
            except ssl.SSLError as e:
                raise ValueError(f"TLSFiles.client_ca: {self.client_ca!r} is not a PEM CA certificate ({e})") from None

    def days_left(self, now: float | None = None) -> float:
        """Days until the certificate ends (negative once it has)."""
        try:
            # The standard library's own certificate decoder (the one its tests use): no
            # third-party parser is needed for one date.
            not_after = ssl._ssl._test_decode_cert(self.cert)["notAfter"]
        except (ssl.SSLError, KeyError) as e:
            raise ValueError(f"TLSFiles.cert: {self.cert!r} is not a PEM certificate ({e})") from None
        return (ssl.cert_time_to_seconds(not_after) - (time.time() if now is None else now)) / 86400

    def _check_expiry(self, days: float) -> None:
        if days < 0 and not self.allow_expired:
            raise ValueError(f"TLSFiles.cert: {self.cert!r} expired {-days:.1f} days ago; renew it "
                             "(or allow_expired, --allow-expired-cert, to serve it anyway)")
        if days < EXPIRY_WARNING_DAYS:
            log.warning("the TLS certificate %s %s", self.cert,
                        f"expired {-days:.1f} days ago" if days < 0 else f"expires in {days:.1f} days")

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


def token_refusal(authorization: str | None) -> str:
    """What a call without a known bearer token is told (it is UNAUTHENTICATED)."""
    if authorization:
        return "a valid bearer token is required in the 'authorization' metadata"
    return "no 'authorization' metadata: this server needs a bearer token"


class TokenGate(grpc.aio.ServerInterceptor):
    """Refuses calls to ``service`` without a known token, on their metadata alone.

    The refusal is served by a request-streaming handler that never reads its request, so
    grpc does not receive the message of a caller without a token (a tokenless caller sends
    at most what HTTP/2 flow control lets through, never ``max_receive_message_length``).
    ``on_refused(method)`` counts each refusal."""

    def __init__(self, tokens: TokenFile, service: str, on_refused: Callable[[str], None]):
        self.tokens, self.prefix, self.on_refused = tokens, f"/{service}/", on_refused

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if not details.method.startswith(self.prefix):  # health and reflection stay open
            return await continuation(details)
        authorization = dict(details.invocation_metadata or ()).get("authorization")
        if self.tokens.identify(authorization) is not None:
            return await continuation(details)
        self.on_refused(details.method[len(self.prefix):])
        message = token_refusal(authorization)

        async def refuse(_requests, context: grpc.aio.ServicerContext):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return grpc.stream_unary_rpc_method_handler(refuse)


def vouch_for(host: str) -> tuple[str, str]:
    """The metadata by which this process's HTTP front end names the client host it calls for.

    Without tokens, callers are budgeted by address; every HTTP client reaches the service
    through the one front end, so it says which client it speaks for. A secret only this
    process knows makes the claim believable: any other gRPC client is keyed by its peer."""
    return FRONT_END_METADATA, f"{_FRONT_END_SECRET} {host}"


def vouched_caller(metadata) -> str | None:
    """``http:HOST`` for a call this process's HTTP front end made for client HOST, else None."""
    value = dict(metadata or ()).get(FRONT_END_METADATA)
    secret, _, host = str(value or "").partition(" ")
    if host and hmac.compare_digest(secret.encode(), _FRONT_END_SECRET.encode()):
        return f"http:{host}"
    return None


def parse_tokens(text: str, where: str = "tokens") -> tuple[tuple[str, bytes], ...]:
    """``NAME TOKEN`` lines into pairs; names and tokens must be unique, tokens >= 16 chars."""
    pairs, names, values = [], set(), set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):  # a comment is a whole line: '#' may be part of a token
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{where}:{number}: expected 'NAME TOKEN', got {len(parts)} fields "
                             "(a comment must be a line of its own, starting with '#')")
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


def check_bind(host: str, tls: TLSFiles | None, token_file: str | None, insecure: bool,
               flag: str = "--host") -> None:
    """Refuse to serve beyond this machine without TLS and tokens, unless ``insecure``.
    ``flag`` names the option that chose ``host`` (the message quotes it)."""
    if is_loopback(host) or insecure or (tls is not None and token_file is not None):
        return
    missing = " and ".join(name for name, given in (("--tls-cert/--tls-key", tls), ("--token-file", token_file))
                           if given is None)
    raise ValueError(f"{flag} {host} serves other machines: give {missing}, or --insecure to serve "
                     "without them")
