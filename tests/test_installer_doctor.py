"""``appliance doctor``: DNS records against a real (local) resolver, certificate, services, licence, disk, queue."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from test_installer_fixtures import FINGERPRINT, cli, config_path, install

from appliance.config import load_config
from installer.checks import BufferedOutput
from installer.dnsrecords import dkim_keys, expected_records
from installer.doctor import DoctorProbes, run_doctor
from installer.paths import Layout

ADDRESSES = (["203.0.113.25"], ["2001:db8::25"])


class FakeDns:
    """A UDP DNS server on 127.0.0.1 answering from a dict {(name, type): [rdata text]}."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = records
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            question = q.question[0]
            name, rtype = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
            values = self.records.get((name, rtype))
            if values:
                r.answer.append(dns.rrset.from_text_list(question.name, 300, "IN", rtype, values))
            elif not any(n == name for n, _t in self.records):
                r.set_rcode(dns.rcode.NXDOMAIN)
            try:
                self.sock.sendto(r.to_wire(), addr)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def zone_for(root: Path, domain: str = "example.com") -> dict[tuple[str, str], list[str]]:
    recs = expected_records(domain, "mail.example.com", ipv4=ADDRESSES[0], ipv6=ADDRESSES[1], dkim=dkim_keys(Layout(root).keys, domain))
    zone: dict[tuple[str, str], list[str]] = {(f"{domain}.", "SOA"): ["ns1.example.net. hostmaster.example.com. 1 3600 600 86400 300"]}
    for r in recs:
        zone.setdefault((r.name, r.type), []).append(r.value)
    return zone


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("doctor")
    rc, out = install(root)
    assert rc == 0, out
    return root


def config_with_resolver(root: Path, port: int):  # type: ignore[no-untyped-def]
    path = config_path(root)
    text = re.sub(r"(?m)^resolvers = \[.*\]$", 'resolvers = ["127.0.0.1"]', path.read_text(), count=1)
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", text, count=1)  # [dns] port
    path.write_text(text)
    return load_config(path)


def healthy() -> DoctorProbes:
    return DoctorProbes(connect=lambda host, port: True, http_get=lambda url, timeout: "pong\r\n", addresses=lambda: ADDRESSES,
                        licence_kw={"fingerprint": FINGERPRINT})


def findings(out: BufferedOutput, level: str) -> list[str]:
    return [f.message for f in out.findings if f.level == level]


def test_everything_published_and_running(root: Path) -> None:
    server = FakeDns(zone_for(root))
    try:
        out = BufferedOutput()
        run_doctor(config_with_resolver(root, server.port), out, probes=healthy())
    finally:
        server.close()
    assert out.errors == 0, findings(out, "error")
    assert findings(out, "warning") == ["the certificate is self-signed: mail clients warn and other servers may refuse TLS"]
    dns_ok = [f.message for f in out.findings if f.section == "DNS for example.com"]
    for what in ("MX: example.com. MX", "A: mail.example.com. A", "SPF: example.com. TXT", "DKIM (ed25519): s1._domainkey.example.com. TXT",
                 "DKIM (rsa): s1r._domainkey.example.com. TXT", "DMARC: _dmarc.example.com. TXT", "MTA-STS: _mta-sts.example.com. TXT",
                 "TLS-RPT: _smtp._tls.example.com. TXT", "SRV (RFC 6186): _imaps._tcp.example.com. SRV",
                 "autodiscover (Outlook): autodiscover.example.com. CNAME"):
        assert what in dns_ok, what
    sections = {f.section for f in out.findings}
    assert sections == {"System", "Licence", "Certificate", "Services", "DNS for example.com"}


def test_missing_and_wrong_records_are_errors_with_the_record_to_publish(root: Path) -> None:
    zone = zone_for(root)
    del zone[("s1._domainkey.example.com.", "TXT")]
    zone[("example.com.", "MX")] = ["10 mx.elsewhere.example."]
    del zone[("_smtp._tls.example.com.", "TXT")]
    zone[("mail.example.com.", "A")] = ["198.51.100.99"]
    server = FakeDns(zone)
    try:
        out = BufferedOutput()
        run_doctor(config_with_resolver(root, server.port), out, probes=healthy())
    finally:
        server.close()
    errors = {f.message: f.fix for f in out.findings if f.level == "error"}
    assert errors["DKIM (ed25519): s1._domainkey.example.com. TXT: not published"].startswith(
        'publish: s1._domainkey.example.com. TXT "v=DKIM1; k=ed25519; p=')
    assert errors["MX: example.com. MX: published as 10 mx.elsewhere.example., expected 10 mail.example.com."] == \
        "publish: example.com. MX 10 mail.example.com."
    warnings = findings(out, "warning")
    assert "TLS-RPT: _smtp._tls.example.com. TXT: not published" in warnings  # optional records warn
    assert any("points to 198.51.100.99, not to an address of this host" in w for w in warnings)


def test_resolver_that_does_not_answer(root: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never answers: every lookup times out
        config_with_resolver(root, port)
        cfg_text = config_path(root).read_text().replace('timeout = "5s"', 'timeout = "0.2s"', 1)
        config_path(root).write_text(cfg_text)
        cfg = load_config(config_path(root))
        out = BufferedOutput()
        started = time.monotonic()
        run_doctor(cfg, out, probes=healthy())
        assert time.monotonic() - started < 10
    dns_findings = [f for f in out.findings if f.section == "DNS for example.com"]
    assert len(dns_findings) == 1 and dns_findings[0].level == "error"
    assert "does not answer; DNS records not checked" in dns_findings[0].message
    config_path(root).write_text(cfg_text.replace('timeout = "0.2s"', 'timeout = "5s"', 1))


def test_services_down_certificate_queue_and_owners(root: Path, tmp_path: Path) -> None:
    from appliance.keys import generate_self_signed_cert

    cfg = load_config(config_path(root))
    L = Layout(root)
    ready = L.data / "queue" / "ready"
    ready.mkdir(parents=True, exist_ok=True)
    (ready / "q1").write_bytes(b"x")
    os.utime(ready / "q1", (time.time() - 6 * 3600, time.time() - 6 * 3600))
    generate_self_signed_cert(tmp_path / "c.pem", tmp_path / "k.pem", "other.example.net", days=5)
    cert_backup = (L.tls / "cert.pem").read_bytes()
    (L.tls / "cert.pem").write_bytes((tmp_path / "c.pem").read_bytes())
    os.chown(L.data, 65534, 65534)
    try:
        probes = DoctorProbes(connect=lambda host, port: port != 25, http_get=lambda url, timeout: None, addresses=lambda: ADDRESSES)
        out = BufferedOutput()
        run_doctor(cfg, out, dns=False, probes=probes)
    finally:
        os.chown(L.data, 0, 0)
        (L.tls / "cert.pem").write_bytes(cert_backup)
        (ready / "q1").unlink()
    errors = {f.message: f.fix for f in out.findings if f.level == "error"}
    assert errors["mx (smtp) does not answer on 0.0.0.0:25"] == "systemctl start appliance.target (or run appliance up)"
    assert "rspamd does not answer at http://127.0.0.1:11333" in errors
    assert "the certificate does not name mail.example.com (it names other.example.net, localhost)" in errors
    warnings = findings(out, "warning")
    assert any(w.startswith("the certificate ") and "expires on" in w and "in 4 days" in w for w in warnings)
    assert "1 messages waiting in the outbound queue, the oldest for 6h" in warnings
    assert any("belong to another user than the services'" in w for w in warnings)
    assert "imap (imap) answers on 0.0.0.0:143" in findings(out, "ok")


def test_cli_doctor_json_and_exit_code(root: Path) -> None:
    rc, out, err = cli("-c", str(config_path(root)), "doctor", "--no-dns", "--json")
    doc = json.loads(out)
    assert rc == (1 if doc["errors"] else 0)
    assert {f["section"] for f in doc["findings"]} == {"System", "Licence", "Certificate", "Services"}
    assert all(f["fix"] for f in doc["findings"] if f["level"] != "ok")
    rc2, text, err = cli("-c", str(config_path(root)), "doctor", "--no-dns")
    assert rc2 == rc and text.startswith("System\n") and "errors," in text.splitlines()[-1]
