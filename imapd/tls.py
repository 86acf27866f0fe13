"""The TLS context for Twisted listeners (implicit TLS and STARTTLS/STLS), from ``[tls]``."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

_MIN = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}
_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """One pyOpenSSL context, loaded once, shared by every connection."""

    def __init__(self, cert_file: Any, key_file: Any, min_version: str = "TLSv1.2") -> None:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(_MIN.get(min_version, SSL.TLS1_2_VERSION))
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_SINGLE_ECDH_USE
                        | SSL.OP_SINGLE_DH_USE | SSL.OP_NO_RENEGOTIATION)
        ctx.set_cipher_list(_CIPHERS)
        ctx.use_certificate_chain_file(str(cert_file))
        ctx.use_privatekey_file(str(key_file))
        ctx.check_privatekey()
        ctx.set_session_id(b"mail-appliance-imapd")
        self._ctx = ctx

    def getContext(self) -> SSL.Context:  # noqa: N802 - Twisted API
        return self._ctx

    def serverConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:  # noqa: N802 - Twisted API
        return SSL.Connection(self._ctx, None)


def from_config(cfg: Any) -> ServerTLS:
    tls = cfg.tls
    return ServerTLS(tls.cert_file, tls.key_file, tls.min_version)
