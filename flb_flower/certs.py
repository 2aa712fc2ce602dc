"""Development certificates and SuperNode keys, to try Flower's secure mode (TLS and node authentication).

    python -m flb_flower.certs OUT_DIR --nodes N [--host NAME ...]

writes into OUT_DIR (created; it must not hold these files already):
- `ca.crt`: a throwaway certificate authority. Its private key is never written, so nothing more can be
  signed with it; run the command again for new certificates.
- `server.pem`, `server.key`: the SuperLink's certificate and key, valid for localhost, 127.0.0.1 (the
  SuperLink's own ServerApp executor connects there) and every `--host` (the name or IP nodes connect to).
- `node-<i>`, `node-<i>.pub`: one ECDSA P-384 key pair per SuperNode in OpenSSH format (what
  `ssh-keygen -t ecdsa -b 384` makes and `flwr supernode register` and `--auth-supernode-private-key` take).
Private keys are written readable by their owner only. For trials: a real deployment's certificate comes from
its own CA (docs/multi-machine.md, "TLS and node authentication").
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flb.audit.keystore import write_new_private_file

VALID_DAYS = 30
LOOPBACK_NAMES = ("localhost", "127.0.0.1")


def write_dev_credentials(out_dir: Path, nodes: int, hosts: tuple[str, ...] = ()) -> None:
    """The CA certificate, the server certificate and key, and `nodes` SuperNode key pairs, in `out_dir`."""
    if nodes < 0:
        raise ValueError(f"--nodes {nodes}: give the number of SuperNodes, 0 or more")
    names = [*LOOPBACK_NAMES, *(h for h in hosts if h not in LOOPBACK_NAMES)]
    targets = ["ca.crt", "server.pem", "server.key"] + [f"node-{i}{ext}" for i in range(nodes) for ext in ("", ".pub")]
    if existing := [name for name in targets if (out_dir / name).exists()]:
        raise FileExistsError(
            f"{out_dir / existing[0]} exists; give an empty OUT_DIR (these files are never overwritten)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _ca_certificate(ca_key)
    server_key = ec.generate_private_key(ec.SECP384R1())
    (out_dir / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (out_dir / "server.pem").write_bytes(
        _server_certificate(server_key, ca_key, ca_cert, names).public_bytes(serialization.Encoding.PEM)
    )
    write_new_private_file(
        out_dir / "server.key",
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    for i in range(nodes):
        node_key = ec.generate_private_key(ec.SECP384R1())
        write_new_private_file(
            out_dir / f"node-{i}",
            node_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
        )
        (out_dir / f"node-{i}.pub").write_bytes(
            node_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            + b"\n"
        )


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FLB development CA")])
    return (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA384())
    )


def _server_certificate(key, ca_key, ca_cert: x509.Certificate, names: list[str]) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-1])])
    return (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clocks a little behind
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def _general_name(name: str) -> x509.GeneralName:
    """An IP address SAN for an address (TLS checks an IP against those only), a DNS SAN for a host name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flb_flower.certs", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the certificates and keys")
    parser.add_argument("--nodes", type=int, required=True, help="how many SuperNode key pairs to make")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="a name or IP address SuperNodes reach the "
        "SuperLink at (repeatable); localhost and 127.0.0.1 are always included",
    )
    args = parser.parse_args(argv)
    try:
        write_dev_credentials(args.out_dir, args.nodes, tuple(args.host))
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote ca.crt, server.pem, server.key and {args.nodes} node key pair(s) to {args.out_dir.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
