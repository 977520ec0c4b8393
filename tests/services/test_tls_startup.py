"""TLS files are checked at start, each fault named with its file: a file that is not a
certificate, a key of another certificate, a client CA that is not one, an expired
certificate (refused unless allowed) and one about to expire (warned about)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pki_helpers import dated_cert, make_pki
from services.security import TLSFiles

DAY = 86400


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = make_pki(tmp_path_factory.mktemp("pki"))
    (d / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return d


@pytest.mark.parametrize("files, message", [
    (("garbage.pem", "server.key", None), r"TLSFiles.cert: '.*garbage.pem' is not a PEM certificate"),
    (("server.pem", "client.key", None), r"TLSFiles.key: '.*client.key' does not belong to the certificate "
                                         r"'.*server.pem'"),
    (("server.pem", "server.pem", None), r"TLSFiles.key: '.*server.pem' is not a PEM private key"),
    (("server.pem", "server.key", "garbage.pem"), r"TLSFiles.client_ca: '.*garbage.pem' is not a PEM CA"),
], ids=["garbage certificate", "mismatched key", "no key in the key file", "garbage client CA"])
def test_a_bad_tls_file_is_named_with_its_fault(pki, files, message):
    cert, key, ca = files
    with pytest.raises(ValueError, match=message):
        TLSFiles(str(pki / cert), str(pki / key), str(pki / ca) if ca else None)


def test_an_expired_certificate_is_refused_unless_allowed(tmp_path, caplog):
    now = time.time()
    cert, key = dated_cert(tmp_path, "old", now - 30 * DAY, now - 2 * DAY)
    with pytest.raises(ValueError, match=r"TLSFiles.cert: '.*cert.pem' expired 2.0 days ago.*--allow-expired-cert"):
        TLSFiles(str(cert), str(key))
    with caplog.at_level(logging.WARNING, logger="services.security"):
        TLSFiles(str(cert), str(key), allow_expired=True)
    assert "expired 2.0 days ago" in caplog.text


def test_a_certificate_about_to_expire_is_warned_about(tmp_path, caplog):
    now = time.time()
    soon, soon_key = dated_cert(tmp_path, "soon", now - DAY, now + 3 * DAY)
    later, later_key = dated_cert(tmp_path, "later", now - DAY, now + 90 * DAY)
    with caplog.at_level(logging.WARNING, logger="services.security"):
        TLSFiles(str(later), str(later_key))
        assert caplog.text == ""
        TLSFiles(str(soon), str(soon_key))
    assert f"{soon} expires in 3.0 days" in caplog.text


def test_grm_serve_names_the_file_instead_of_failing_to_bind(pki, tiny_model_path):
    run = subprocess.run([sys.executable, "-m", "grm_cli", "serve", "--model", str(tiny_model_path), "--port", "0",
                          "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "client.key")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "grm serve: TLSFiles.key:" in run.stderr and "client.key" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and "could not bind" not in run.stderr
