"""TLS for upstream connections: a provider's own CA bundle (a private CA, a TLS-inspecting
egress proxy) and client certificate (mTLS), else the system's trust store. Certificates
and host names are always verified."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Egress:
    """How one provider is reached, beyond its URL. `proxy`: an http:// proxy URL,
    `"direct"`, or None for what the environment says."""

    proxy: str | None = None
    ca_file: str | None = None  # PEM: the CAs trusted for it instead of the system's
    client_cert: str | None = None  # PEM certificate (chain) for mTLS
    client_key: str | None = None  # its key; None: in client_cert's file

    @property
    def custom_tls(self) -> bool:
        return bool(self.ca_file or self.client_cert)

    def __repr__(self) -> str:  # a proxy URL may hold credentials
        return f"Egress(proxy={'set' if self.proxy else None}, ca_file={self.ca_file!r}, " \
               f"client_cert={self.client_cert!r})"


def client_context(egress: Egress | None = None) -> ssl.SSLContext:
    """A verifying client context: `egress`'s CA file and client certificate if it names
    them, else the system's trust store (SSL_CERT_FILE / SSL_CERT_DIR honoured)."""
    ca_file = egress.ca_file if egress is not None else None
    context = ssl.create_default_context(cafile=ca_file)
    if egress is not None and egress.client_cert:
        context.load_cert_chain(egress.client_cert, egress.client_key)
    return context
