"""SPF, DKIM and DMARC on port 25 against a fake DNS server (tests/dnsserver.py).

End to end: an instance whose [dns] points at the fake server; each test
publishes records for its own domains and reads the Authentication-Results
the MTA prepended. A few in-process checks of ``MailAuth`` cover the cases
that need no SMTP.
"""

from __future__ import annotations

import base64
import secrets
import smtplib
import time

import dkim
import dns.resolver
import pytest
from conftest import Server, create_test_instance
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dnsserver import FakeDNS
from mtakit import inbox, mx_client, new_user

from mta.mailauth import MailAuth, configure_dns, org_domain


@pytest.fixture(scope="module")
def fake_dns():  # type: ignore[no-untyped-def]
    server = FakeDNS()
    yield server
    server.close()


@pytest.fixture(scope="module")
def inst(tmp_path_factory, fake_dns):  # type: ignore[no-untyped-def]
    return create_test_instance(
        tmp_path_factory.mktemp("mailauth"),
        overrides=fake_dns.overrides(),
    )


@pytest.fixture(scope="module")
def mx(inst):  # type: ignore[no-untyped-def]
    srv = Server(inst, services=["mta"])
    yield inst.ports["mx"]
    srv.stop()


@pytest.fixture(scope="module")
def store(inst):  # type: ignore[no-untyped-def]
    s = inst.store()
    yield s
    s.close()


def domain() -> str:
    return f"d{secrets.token_hex(4)}.example"


def ed25519_key(fake_dns: FakeDNS, dom: str, selector: str = "ed") -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    fake_dns.add(f"{selector}._domainkey.{dom}", "TXT", f"v=DKIM1; k=ed25519; p={base64.b64encode(pub).decode()}")
    return base64.b64encode(seed)


def rsa_key(fake_dns: FakeDNS, dom: str, selector: str = "rsa") -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fake_dns.add(f"{selector}._domainkey.{dom}", "TXT", f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}")
    return pem


def msg(sender: str, rcpt: str, subject: str = "auth test", body: str = "Signed body.\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: <{secrets.token_hex(6)}@x>\r\n\r\n{body}").encode()


def sign(raw: bytes, dom: str, selector: str, key: bytes, algorithm: bytes) -> bytes:
    sig = dkim.sign(raw, selector.encode(), dom.encode(), key, signature_algorithm=algorithm,
                    include_headers=[b"from", b"to", b"subject", b"message-id"])
    return sig + raw


def deliver(mx: int, store, sender: str, raw: bytes) -> str:  # type: ignore[no-untyped-def]
    """Send to a fresh user; return the stored Authentication-Results field (unfolded)."""
    rcpt, _ = new_user(store)
    with mx_client(mx) as client:
        client.sendmail(sender, [rcpt], raw)
    (stored,) = inbox(store, rcpt)
    head = stored.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n\t", " ")
    fields = [line for line in head.split("\r\n") if line.startswith("Authentication-Results: mail.example.test;")]
    assert len(fields) == 1, head
    return fields[0]


def test_unsigned_mail_is_dkim_none_and_spf_pass(mx, store, fake_dns) -> None:  # type: ignore[no-untyped-def]
    dom = domain()
    fake_dns.add(dom, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    ar = deliver(mx, store, f"a@{dom}", msg(f"a@{dom}", "x@example.test"))
    assert f"spf=pass smtp.helo=client.example smtp.mailfrom=a@{dom}" in ar
    assert "dkim=none" in ar and "dkim=fail" not in ar
    assert "dmarc=none" in ar


def test_spf_fail_without_dmarc_is_accepted(mx, store, fake_dns) -> None:  # type: ignore[no-untyped-def]
    dom = domain()
    fake_dns.add(dom, "TXT", "v=spf1 ip4:192.0.2.1 -all")
    ar = deliver(mx, store, f"a@{dom}", msg(f"a@{dom}", "x@example.test"))
    assert "spf=fail" in ar and "dmarc=none" in ar


@pytest.mark.parametrize("algorithm", [b"ed25519-sha256", b"rsa-sha256"])
def test_dkim_pass_aligns_dmarc(mx, store, fake_dns, algorithm: bytes) -> None:  # type: ignore[no-untyped-def]
    dom = domain()
    fake_dns.add(dom, "TXT", "v=spf1 -all")  # SPF fails: DMARC must pass through DKIM alone
    fake_dns.add(f"_dmarc.{dom}", "TXT", "v=DMARC1; p=reject")
    selector = "ed" if algorithm.startswith(b"ed") else "rsa"
    key = ed25519_key(fake_dns, dom) if selector == "ed" else rsa_key(fake_dns, dom)
    raw = sign(msg(f"news@{dom}", "x@example.test"), dom, selector, key, algorithm)
    ar = deliver(mx, store, f"bounce@{dom}", raw)
    assert f"dkim=pass header.d={dom}" in ar
    assert "spf=fail" in ar
    assert f"dmarc=pass header.from={dom}" in ar


def test_dmarc_reject_is_refused_with_550(mx, store, fake_dns) -> None:  # type: ignore[no-untyped-def]
    dom = domain()
    fake_dns.add(dom, "TXT", "v=spf1 ip4:192.0.2.1 -all")
    fake_dns.add(f"_dmarc.{dom}", "TXT", "v=DMARC1; p=reject")
    key = ed25519_key(fake_dns, dom)
    good = sign(msg(f"ceo@{dom}", "x@example.test"), dom, "ed", key, b"ed25519-sha256")
    tampered = good.replace(b"Signed body.", b"Wire the money.")
    rcpt, _ = new_user(store)
    with mx_client(mx) as client:
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail(f"ceo@{dom}", [rcpt], tampered)
    assert err.value.smtp_code == 550 and err.value.smtp_error.startswith(b"5.7.1")
    assert inbox(store, rcpt) == []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = store.events.query(kind="delivery", user=f"ceo@{dom}")
        if events:
            break
        time.sleep(0.1)
    assert events[0].result == "rejected"
    assert events[0].detail["checks"] == {"spf": "fail", "dkim": "fail", "dmarc": "fail"}


def test_dmarc_quarantine_is_delivered_with_dmarc_fail(mx, store, fake_dns) -> None:  # type: ignore[no-untyped-def]
    dom = domain()
    fake_dns.add(dom, "TXT", "v=spf1 ip4:192.0.2.1 -all")
    fake_dns.add(f"_dmarc.{dom}", "TXT", "v=DMARC1; p=quarantine")
    ar = deliver(mx, store, f"a@{dom}", msg(f"a@{dom}", "x@example.test"))
    assert f"dmarc=fail header.from={dom} policy.dmarc=quarantine" in ar


def test_dmarc_of_the_organisational_domain_applies_to_subdomains(mx, store, fake_dns) -> None:  # type: ignore[no-untyped-def]
    dom = domain()
    fake_dns.add(f"_dmarc.{dom}", "TXT", "v=DMARC1; p=none")
    fake_dns.add(f"mail.{dom}", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    ar = deliver(mx, store, f"a@mail.{dom}", msg(f"a@mail.{dom}", "x@example.test"))
    assert f"dmarc=pass header.from=mail.{dom}" in ar


def test_forged_authentication_results_for_our_host_are_removed(mx, store, fake_dns) -> None:  # type: ignore[no-untyped-def]
    dom = domain()
    forged = (
        b"Authentication-Results: mail.example.test; dkim=pass header.d=bank.example; dmarc=pass\r\n"
        b"Authentication-Results: other.example; spf=pass\r\n"
    )
    rcpt, _ = new_user(store)
    with mx_client(mx) as client:
        client.sendmail(f"a@{dom}", [rcpt], forged + msg(f"a@{dom}", rcpt))
    (stored,) = inbox(store, rcpt)
    head = stored.split(b"\r\n\r\n", 1)[0]
    assert b"header.d=bank.example" not in head
    assert b"Authentication-Results: other.example; spf=pass" in head
    assert head.count(b"Authentication-Results: mail.example.test;") == 1


def test_dns_timeout_is_temperror_not_a_rejection(fake_dns) -> None:  # type: ignore[no-untyped-def]
    """In process: a resolver that never answers gives temperror, and nothing is refused."""
    import socket

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    saved = dns.resolver.default_resolver
    try:
        configure_dns(["127.0.0.1"], port=silent.getsockname()[1], timeout=0.3)
        verdict = MailAuth("mx.test").check(msg("a@slow.example", "b@example.test"), ip="192.0.2.9", helo="h.example",
                                            mail_from="a@slow.example")
    finally:
        dns.resolver.default_resolver = saved
        silent.close()
    assert verdict.spf == "temperror"
    assert verdict.dmarc in ("temperror", "none")
    assert not verdict.dmarc_reject
    assert verdict.header.startswith("Authentication-Results: mx.test;")


def test_org_domain_is_cached() -> None:
    assert org_domain("a.b.example.co.uk") == "example.co.uk"
    before = org_domain.cache_info().hits
    org_domain("a.b.example.co.uk")
    assert org_domain.cache_info().hits == before + 1
