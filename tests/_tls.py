"""Test certificates made by the real ``openssl`` at test time: a CA, a server certificate for
127.0.0.1/localhost, a second server certificate (for rotation) and a client certificate."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict

import pytest


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: str) -> Dict[str, str]:
    """Paths of ca.pem, server.pem/server.key, server2.pem/server2.key, client.pem/client.key,
    other.key (matches nothing) and server-enc.key (encrypted with 'secret')."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (.ci/run installs Debian's openssl)")
    d = directory
    # The extensions RFC 5280 asks for: Python 3.13 verifies strictly (VERIFY_X509_STRICT) and
    # refuses a CA without keyUsage or a leaf without an authority key identifier.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=graceful test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    ext = os.path.join(d, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                "subjectKeyIdentifier=hash\n"
                "authorityKeyIdentifier=keyid,issuer\n")
    for name, cn in (("server", "graceful server one"), ("server2", "graceful server two"),
                     ("client", "graceful client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/O=graceful/CN={cn}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", f"{name}.pem", cwd=d)
    _openssl("genrsa", "-out", "other.key", "2048", cwd=d)
    _openssl("rsa", "-in", "server.key", "-aes256", "-passout", "pass:secret", "-out",
             "server-enc.key", cwd=d)
    names = ("ca.pem", "server.pem", "server.key", "server2.pem", "server2.key", "client.pem",
             "client.key", "other.key", "server-enc.key")
    return {name: os.path.join(d, name) for name in names}
