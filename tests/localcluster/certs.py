"""A throwaway PKI for one local cluster, made with the openssl CLI.

The `cryptography` package is not among the project's locked dependencies, and openssl is on
every Debian machine, so this avoids a new dependency. EC P-256 keys keep it fast (~50 ms).
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Pki:
    """Paths of the generated files; `client(name)` gives (cert, key) of a client identity."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def _leaf(pki: Pki, name: str, subject: str, ext: str) -> None:
    d = pki.dir
    _openssl(
        "req",
        "-new",
        *_EC,
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        subject,
        cwd=d,
    )
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        str(secrets.randbits(63)),
        "-days",
        "3650",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=d,
    )


# Client identities: (file name, subject). The controller-manager and scheduler use the
# names the bootstrap RBAC policy binds, so they run with their real, narrow permissions.
CLIENTS = {
    "admin": "/O=system:masters/CN=kubernetes-admin",
    "controller-manager": "/CN=system:kube-controller-manager",
    "scheduler": "/CN=system:kube-scheduler",
    "apiserver-kubelet-client": "/O=system:masters/CN=kube-apiserver-kubelet-client",
}


def issue_client_cert(pki: Pki, name: str, subject: str) -> tuple[Path, Path]:
    """A client certificate (and key) signed by the cluster CA, e.g. a node's
    `/O=system:nodes/CN=system:node:<name>`; returns (cert, key)."""
    _leaf(
        pki,
        name,
        subject,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    pki.pair(name)[1].chmod(0o600)
    return pki.pair(name)


def make_pki(d: Path, extra_ips: tuple[str, ...] = ()) -> Pki:
    """Create CA, apiserver serving cert, client certs and the service-account key pair.
    `extra_ips` are more addresses the API server is reached at (the real node's link)."""
    d.mkdir(parents=True, exist_ok=True)
    pki = Pki(d)
    _openssl(
        "req",
        "-x509",
        *_EC,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=kubetune-localcluster-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=d,
    )
    sans = ",".join(
        [
            "IP:127.0.0.1",
            "IP:10.96.0.1",
            *(f"IP:{ip}" for ip in extra_ips),
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    _leaf(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n",
    )
    # The fake kubelet's serving cert (for `kubectl logs` through the API server).
    _leaf(
        pki,
        "kubelet",
        "/CN=localcluster-kubelet",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    for name, subject in CLIENTS.items():
        issue_client_cert(pki, name, subject)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=d)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    for p in d.iterdir():
        if p.suffix in (".key",):
            p.chmod(0o600)
    return pki
