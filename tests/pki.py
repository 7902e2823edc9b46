"""The throw-away PKI of the certificate tests: the lab's generator
(hosts/lab/pki.py), under the names the tests import."""

from hosts.lab.pki import (
    CA_KU,
    CLIENT_EKU,
    DAY,
    LEAF_KU,
    SERVER_EKU,
    SHA256,
    UTC,
    Issued,
    ec_key,
    key_usage,
    make_ca,
    make_cert,
    make_client,
    make_server,
    name,
    sans,
)

__all__ = [
    "CA_KU",
    "CLIENT_EKU",
    "DAY",
    "LEAF_KU",
    "SERVER_EKU",
    "SHA256",
    "UTC",
    "Issued",
    "ec_key",
    "key_usage",
    "make_ca",
    "make_cert",
    "make_client",
    "make_server",
    "name",
    "sans",
]
