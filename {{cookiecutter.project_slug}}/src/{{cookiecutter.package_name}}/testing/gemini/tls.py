"""Self-signed TLS for local test servers that clients reach over https:// or wss://.

google-genai always connects to the Live API with ``wss://``, so a local stand-in must speak
TLS. The certificate made here is its own issuer (no CA) and names 127.0.0.1 and localhost.
Clients trust it either through the ``ssl.SSLContext`` from :meth:`SelfSignedCertificate.
client_context` or by pointing ``SSL_CERT_FILE`` at :attr:`SelfSignedCertificate.cert_path`.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["SelfSignedCertificate"]


class SelfSignedCertificate:
    """A key and self-signed certificate for 127.0.0.1 and localhost, written to a temp dir.

    Use as a context manager, or call :meth:`cleanup` when done; the files are removed then.
    """

    def __init__(self, *, valid_for: datetime.timedelta = datetime.timedelta(days=1)) -> None:
        # EC keys make this take milliseconds, where RSA-2048 would take ~100 ms per server
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # a minute of slack so a client clock a little behind still accepts it
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + valid_for)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            # a self-signed leaf must say it may act as its own trust anchor, or OpenSSL 3
            # rejects it when it is loaded as the only CA ("invalid CA certificate")
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self._dir = Path(tempfile.mkdtemp(prefix="local-tls-"))
        self.cert_path: Path = self._dir / "cert.pem"
        """PEM certificate: give it to clients as their only trusted CA (or SSL_CERT_FILE)."""
        self.key_path: Path = self._dir / "key.pem"
        """PEM private key (unencrypted), for the server only."""
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.key_path.chmod(0o600)

    def server_context(self) -> ssl.SSLContext:
        """An SSL context for the server side, holding the key and certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts only this certificate, with hostname checks on."""
        return ssl.create_default_context(cafile=str(self.cert_path))

    def cleanup(self) -> None:
        """Remove the key and certificate files."""
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SelfSignedCertificate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
