"""What a web browser may do on the HTTP port: the checks against other sites' pages.

A page of another site can make the browser of someone on this machine (or network)
send requests here. Two checks stop it:

- DNS rebinding: the other site points a name it controls at this server, so its page
  counts as same-origin. The ``Host`` of such a request is that foreign name, so an
  inspector page, or any request that names an ``Origin`` (browsers do), must carry a
  ``Host`` that is an IP address, ``localhost``, the bound name or a configured one.
- cross-site requests: a form or ``fetch`` from another origin (``Origin`` differs from
  ``Host``, ``Origin: null`` from a sandboxed page, or ``Sec-Fetch-Site`` not
  same-origin) may not change anything: only GET and HEAD pass.

Clients that are not browsers (OpenRLHF, curl) send neither header and pass.

    guard = BrowserGuard("127.0.0.1", allowed_hosts=["rm.internal"])
    guard.refusal("POST", {"Origin": "http://evil.example"}, "127.0.0.1:8000", page=False)  # "Origin: ..."
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence


class BrowserGuard:
    def __init__(self, bound_host: str, allowed_hosts: Sequence[str] = ()):
        self.names = {"localhost", bound_host.strip("[]").lower(), *(h.lower() for h in allowed_hosts)}

    def refusal(self, method: str, headers: Mapping[str, str], host: str | None, page: bool) -> str | None:
        """Why a request is refused (a message naming the header), or None. ``page``: an inspector page."""
        if (page or "Origin" in headers) and not self.known_host(host):
            return (f"Host: {host!r} is not a name of this server (an IP address, localhost, or one given "
                    "with --allowed-host)")
        if method not in ("GET", "HEAD") and not same_origin(headers, host):
            return "Origin: only this server's own pages may send this request"
        return None

    def known_host(self, host: str | None) -> bool:
        name = host_name(host or "")
        if name in self.names:
            return True
        try:
            ipaddress.ip_address(name)
            return True  # an address is not a name another site can point elsewhere
        except ValueError:
            return False


def same_origin(headers: Mapping[str, str], host: str | None) -> bool:
    """Whether a browser says the request comes from this server's own page (or no browser sent it)."""
    if headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = headers.get("Origin")
    return origin is None or origin.split("://", 1)[-1] == host


def host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port or IPv6 brackets, lower-cased."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0].lower()
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).lower()
