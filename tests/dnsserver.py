"""A tiny authoritative DNS server on 127.0.0.1 for tests (dnspython, UDP and TCP).

    dns = FakeDNS()                      # picks a free port
    dns.add("example.org", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    dns.add("example.org", "MX", "10 mx.example.org.")
    dns.add("mx.example.org", "A", "127.0.0.1")
    ... point a resolver at ("127.0.0.1", dns.port) ...
    dns.close()

Names it does not know get NXDOMAIN (with an SOA, so resolvers may cache the
negative answer for ``negative_ttl`` seconds); a known name asked for another
type gets an empty NOERROR answer. TXT values longer than 255 bytes are split
into character-strings, as DKIM keys need. ``fake_dns`` is a session fixture
in tests that import it (see test_mta_mailauth.py).
"""

from __future__ import annotations

import socketserver
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def _txt(value: str) -> str:
    data = value.encode()
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return " ".join('"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


class FakeDNS:
    def overrides(self, timeout: float = 2) -> dict:
        """The appliance.toml keys that make an instance resolve through this server."""
        return {"dns.resolvers": [self.host], "dns.port": self.port, "dns.timeout": timeout}

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, ttl: int = 1, negative_ttl: int = 1) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._records: dict[tuple[str, str], list[str]] = {}
        self._lock = threading.Lock()
        self.queries: list[tuple[str, str]] = []
        fake = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = fake.answer(data)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = self.request.recv(2)
                if len(head) < 2:
                    return
                want = int.from_bytes(head, "big")
                data = b""
                while len(data) < want:
                    chunk = self.request.recv(want - len(data))
                    if not chunk:
                        return
                    data += chunk
                reply = fake.answer(data, tcp=True)
                if reply is not None:
                    self.request.sendall(len(reply).to_bytes(2, "big") + reply)

        self._udp = socketserver.ThreadingUDPServer((host, port), Udp)
        self.host, self.port = self._udp.server_address[:2]
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._tcp = socketserver.ThreadingTCPServer((host, self.port), Tcp)
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self._udp, self._tcp)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------ records
    def add(self, name: str, rdtype: str, *values: str) -> None:
        key = (name.lower().rstrip("."), rdtype.upper())
        texts = [_txt(v) if key[1] == "TXT" else v for v in values]
        with self._lock:
            self._records.setdefault(key, []).extend(texts)

    def set(self, name: str, rdtype: str, *values: str) -> None:
        self.remove(name, rdtype)
        self.add(name, rdtype, *values)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        n = name.lower().rstrip(".")
        with self._lock:
            for key in [k for k in self._records if k[0] == n and (rdtype is None or k[1] == rdtype.upper())]:
                del self._records[key]

    # ------------------------------------------------------------- answers
    def answer(self, wire: bytes, *, tcp: bool = False) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - junk on the port
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for q in query.question:
            name = q.name.to_text(omit_final_dot=True).lower()
            rdtype = dns.rdatatype.to_text(q.rdtype)
            self.queries.append((name, rdtype))
            with self._lock:
                values = list(self._records.get((name, rdtype), ()))
                known = any(k[0] == name for k in self._records)
            if values:
                response.answer.append(
                    dns.rrset.from_text_list(q.name, self.ttl, dns.rdataclass.IN, q.rdtype, values)
                )
            else:
                if not known:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                zone = dns.name.from_text(".".join(name.split(".")[-2:]) or ".")
                response.authority.append(
                    dns.rrset.from_text(
                        zone, self.negative_ttl, "IN", "SOA",
                        f"ns.{zone} hostmaster.{zone} 1 3600 600 86400 {self.negative_ttl}",
                    )
                )
        return response.to_wire(max_size=65535 if tcp else 4096)

    def close(self) -> None:
        for s in (self._udp, self._tcp):
            s.shutdown()
            s.server_close()

