"""A self-signed TLS certificate for a first try of HTTPS (``make run-https``).

    python -m engine.tls DIR      # writes DIR/cert.pem and DIR/key.pem unless both exist

Streamlit serves TLS itself from ``server.sslCertFile`` / ``server.sslKeyFile``. A self-signed
certificate encrypts the connection but proves nothing about the server: browsers warn until
it is trusted. For a class, use a real certificate (README: Serving a class) instead.
The ``cryptography`` package writes it when installed, else the ``openssl`` command does.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from engine.errors import WorkbenchError

DAYS = 365


def ensure_self_signed(folder: str | Path) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` in ``folder``, made now unless both are there already."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.is_file() and key.is_file():
        return cert, key
    host = socket.gethostname()
    names = sorted({"localhost", host} if re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host) else {"localhost"})
    try:
        _with_cryptography(cert, key, names)
    except ImportError:
        _with_openssl(cert, key, names)
    os.chmod(key, 0o600)  # the private key: readable by its owner only
    return cert, key


def _with_cryptography(cert: Path, key: Path, names: list[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a))
                                               for a in ("127.0.0.1", "::1")]
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=DAYS))
                   .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                   .sign(private, hashes.SHA256()))
    with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _with_openssl(cert: Path, key: Path, names: list[str]) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise WorkbenchError("making a certificate needs the cryptography package or the openssl "
                             "command; install one, or give Streamlit a certificate of your own")
    alt = ",".join([f"DNS:{n}" for n in names] + ["IP:127.0.0.1", "IP:::1"])
    # Fixed arguments, no shell: the names come from this machine, the paths from the caller.
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(DAYS),
         "-subj", "/CN=localhost", "-addext", f"subjectAltName={alt}"],
        capture_output=True, text=True)
    if result.returncode != 0:
        raise WorkbenchError(f"openssl could not make a certificate: {result.stderr.strip()[:300]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m engine.tls FOLDER")
    for path in ensure_self_signed(sys.argv[1]):
        print(path)
