"""TLS for the store's tests: a CA of our own, and PostgreSQL's TLS in front of a server without it.

The local test servers have no TLS; :class:`PgTlsFront` serves PostgreSQL's TLS handshake
with :class:`Pki`'s certificate and relays the decrypted protocol, so verification is shown
for real.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import select
import socket
import ssl
import struct
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class Pki:
    """A CA and a server certificate for 127.0.0.1 and localhost, as PEM files."""

    def __init__(self, folder: Path) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batchfarm test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    *(True, False, False, False, False),
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca = folder / "ca.pem"
        self.cert = folder / "server.pem"
        self.key = folder / "server.key"
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        self.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


class PgTlsFront:
    """PostgreSQL's TLS, served in front of a server that has none.

    It answers the client's SSLRequest with 'S', completes the TLS handshake with the test
    CA's certificate, then relays the decrypted protocol to the real server. A client that
    does not ask for TLS is refused, as ``hostssl`` in pg_hba.conf would refuse it.
    """

    def __init__(self, upstream: tuple[str, int], pki: Pki) -> None:
        self.upstream = upstream
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.cert, pki.key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(client)
            while True:
                head = client.recv(8, socket.MSG_WAITALL)
                if len(head) < 8:
                    return
                code = struct.unpack("!II", head)[1]
                if code == GSSENC_REQUEST:
                    client.sendall(b"N")
                    continue
                if code != SSL_REQUEST:
                    return  # plain text: refused
                client.sendall(b"S")
                break
            try:
                tls = stack.enter_context(self.context.wrap_socket(client, server_side=True))
            except (ssl.SSLError, OSError):
                return  # the client refused our certificate
            self.handshakes += 1
            upstream = stack.enter_context(socket.create_connection(self.upstream))
            self._relay(tls, upstream)

    def _relay(self, tls: ssl.SSLSocket, upstream: socket.socket) -> None:
        peers: dict[Any, Any] = {tls: upstream, upstream: tls}
        while not self._stop.is_set():
            ready = [tls] if tls.pending() else select.select(list(peers), [], [], 0.5)[0]
            for source in ready:
                try:
                    data = source.recv(65536)
                except (OSError, ssl.SSLError):
                    return
                if not data:
                    return
                peers[source].sendall(data)
