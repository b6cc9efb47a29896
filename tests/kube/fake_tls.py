"""Certificates for the fake API server, made with the openssl command line: a CA, a
serving certificate for 127.0.0.1, and client certificates (CN = user, O = group) as
kube-apiserver's x509 authenticator reads them. Made once per test process (EC P-256:
~20 ms each) in a private temp dir removed at exit."""

from __future__ import annotations

import atexit
import base64
import shutil
import ssl
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

_lock = threading.Lock()
_dir: Path | None = None
_ca: CA | None = None


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path

    def data(self) -> tuple[str, str]:
        """(cert, key) as kubeconfig's *-data fields (base64 of the PEM)."""
        return tuple(base64.b64encode(p.read_bytes()).decode() for p in (self.cert, self.key))  # type: ignore[return-value]


def _openssl(*args: str) -> None:
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()}")


def _workdir() -> Path:
    global _dir
    if _dir is None:
        _dir = Path(tempfile.mkdtemp(prefix="mirrord-fake-tls-"))
        atexit.register(shutil.rmtree, _dir, True)
    return _dir


class CA:
    def __init__(self, where: Path) -> None:
        self.dir = where
        self.pem = Pem(where / "ca.crt", where / "ca.key")
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(self.pem.key), "-out", str(self.pem.cert),
            "-days", "2", "-subj", "/CN=fake-kube-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        self._issued: dict[str, Pem] = {}

    def data(self) -> str:
        return base64.b64encode(self.pem.cert.read_bytes()).decode()

    def issue(self, name: str, subject: str, extensions: list[str]) -> Pem:
        if name in self._issued:
            return self._issued[name]
        pem = Pem(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        csr = self.dir / f"{name}.csr"
        ext = self.dir / f"{name}.ext"
        ext.write_text("\n".join(extensions) + "\n")
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(pem.key), "-out", str(csr), "-subj", subject,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.pem.cert),
            "-CAkey", str(self.pem.key), "-CAcreateserial", "-out", str(pem.cert),
            "-days", "2", "-extfile", str(ext),
        )  # fmt: skip
        self._issued[name] = pem
        return pem

    def serving(self) -> Pem:
        return self.issue(
            "apiserver",
            "/CN=kube-apiserver",
            ["subjectAltName=IP:127.0.0.1,DNS:localhost", "extendedKeyUsage=serverAuth"],
        )

    def client(self, user: str, groups: tuple[str, ...] = ()) -> Pem:
        subject = "/CN=" + user + "".join(f"/O={g}" for g in groups)
        return self.issue(f"client-{user}", subject, ["extendedKeyUsage=clientAuth"])

    def server_context(self) -> ssl.SSLContext:
        """Serving, and asking for (not requiring) a client certificate from our CA."""
        pem = self.serving()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pem.cert, pem.key)
        ctx.load_verify_locations(self.pem.cert)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx


def ca() -> CA:
    global _ca
    with _lock:
        if _ca is None:
            _ca = CA(_workdir())
        return _ca


def peer_identity(peercert: dict[str, object] | None) -> tuple[str, list[str]] | None:
    """(user, groups) from a verified client certificate, as kube-apiserver reads it."""
    if not peercert:
        return None
    user, groups = None, []
    for rdn in peercert.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                user = value
            elif key == "organizationName":
                groups.append(value)
    return (user, groups) if user else None
