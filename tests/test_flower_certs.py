"""The development credentials of flb_flower/certs.py: what the SuperLink, its ServerApp executor, the SuperNodes
and `flwr supernode register` need from them, checked with the libraries those use."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key

from flb_flower.certs import main, write_dev_credentials


@pytest.fixture(scope="module")
def credentials(tmp_path_factory):
    out = tmp_path_factory.mktemp("credentials") / "certs"
    write_dev_credentials(out, nodes=2, hosts=("link.example.org", "10.0.0.5"))
    return out


def certificate(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_server_certificate_is_signed_by_the_ca(credentials):
    certificate(credentials / "server.pem").verify_directly_issued_by(certificate(credentials / "ca.crt"))


def test_the_server_certificate_names_loopback_and_every_host(credentials):
    """127.0.0.1 is where the SuperLink's own ServerApp executor connects: without it no run starts."""
    names = certificate(credentials / "server.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert set(names.value.get_values_for_type(x509.DNSName)) == {"localhost", "link.example.org"}
    assert set(names.value.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.5"),
    }


def test_node_keys_are_what_flower_takes(credentials):
    for i in range(2):
        private = load_ssh_private_key((credentials / f"node-{i}").read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)  # what flower-supernode requires
        assert try_load_public_key(credentials / f"node-{i}.pub")  # flwr supernode register's own check


def test_private_keys_are_readable_by_their_owner_only(credentials):
    for name in ("server.key", "node-0", "node-1"):
        assert stat.S_IMODE((credentials / name).stat().st_mode) == 0o600, name
    assert not list(credentials.glob("ca.key*"))  # the CA's key is never written


def test_existing_credentials_are_never_overwritten(credentials, capsys):
    before = (credentials / "server.key").read_bytes()
    assert main([str(credentials), "--nodes", "1"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {credentials / 'ca.crt'} exists; give an empty OUT_DIR")
    assert (credentials / "server.key").read_bytes() == before
