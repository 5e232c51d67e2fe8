#!/usr/bin/env python3
"""N client certificates for one client key, each signed by the lab CA directly.

    client_certs.py CA_CRT CA_KEY CLIENT_CRT CLIENT_KEY N OUT

Each certificate copies CLIENT_CRT's subject and extensions (SPIFFE URI SAN, key usage,
clientAuth) and differs in its serial number, so each carries a signature of its own:
`lakegate load --rotate-certs --cert OUT` then presents a certificate the server has
not seen lately on every handshake (see run.sh, the "fresh" handshakes). One key for
all: the client's CertificateVerify costs the same as with one certificate, and N RSA
key generations would take minutes. Python's `cryptography` (Debian:
python3-cryptography) signs ~1,000 a second where an `openssl x509` per certificate
takes ~30 ms.
"""
import datetime
import sys

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
except ImportError:
    sys.exit("client_certs.py needs Python's cryptography: apt-get install python3-cryptography")


def main():
    if len(sys.argv) != 7:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    ca_crt, ca_key, cl_crt, cl_key, n, out = sys.argv[1:]
    load = lambda p: open(p, "rb").read()
    ca = x509.load_pem_x509_certificate(load(ca_crt))
    ca_private = serialization.load_pem_private_key(load(ca_key), None)
    model = x509.load_pem_x509_certificate(load(cl_crt))
    public = serialization.load_pem_private_key(load(cl_key), None).public_key()
    if public.public_numbers() != model.public_key().public_numbers():
        sys.exit(f"{cl_crt} is not the certificate of {cl_key}")
    if isinstance(ca_private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        digest = hashes.SHA256()
    else:
        digest = None  # Ed25519
    now = datetime.datetime.now(datetime.timezone.utc)
    with open(out, "wb") as f:
        for i in range(int(n)):
            b = (
                x509.CertificateBuilder()
                .subject_name(model.subject)
                .issuer_name(ca.subject)
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
            )
            for ext in model.extensions:
                b = b.add_extension(ext.value, ext.critical)
            f.write(b.sign(ca_private, digest).public_bytes(serialization.Encoding.PEM))


if __name__ == "__main__":
    main()
