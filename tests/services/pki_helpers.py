"""Certificates for the TLS tests, made with the ``openssl`` command: a CA, a server and a
client certificate (``make_pki``), and a self-signed one with chosen dates (``dated_cert``)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

CA_CONFIG = """[ ca ]
default_ca = d
[ d ]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = p
unique_subject = no
[ p ]
commonName = supplied
"""


def openssl(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd)


def make_pki(d: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate, in ``d``."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))
    return d


def dated_cert(d: Path, name: str, start: float, end: float) -> tuple[Path, Path]:
    """A self-signed certificate valid from ``start`` to ``end`` (epoch seconds) and its key.
    ``openssl ca`` is the one command of OpenSSL 3.0 that takes both dates."""
    work = d / f"{name}-ca"
    work.mkdir()
    (work / "ca.cnf").write_text(CA_CONFIG)
    (work / "index.txt").write_text("")
    (work / "serial").write_text("01\n")
    stamp = lambda t: time.strftime("%Y%m%d%H%M%SZ", time.gmtime(t))  # noqa: E731
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", "cert.key",
            "-out", "cert.csr", cwd=work)
    openssl("ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", "cert.key", "-in", "cert.csr",
            "-startdate", stamp(start), "-enddate", stamp(end), "-out", "cert.pem", cwd=work)
    return work / "cert.pem", work / "cert.key"
