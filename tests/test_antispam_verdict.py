"""The verdict logic and the HTTP client, without rspamd (a fake answers instead)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from antispam.client import RspamdError, Scanner, _fold
from antispam.http import HttpError, HttpPool
from antispam.policy import matches, normalise_entry


def cfg(**antispam):  # type: ignore[no-untyped-def]
    a = dict(enabled=True, url="http://127.0.0.1:1", controller_url="http://127.0.0.1:2", timeout=1.0, on_failure="accept",
             managed=False, junk_score=6.0, reject_score=15.0, block_action="junk", max_scan_size=1 << 20,
             quarantine_days=0, controller_password_file="/nonexistent")
    a.update(antispam)
    return SimpleNamespace(antispam=SimpleNamespace(**a))


class FakeClient:
    def __init__(self, answer=None, error=None):  # type: ignore[no-untyped-def]
        self.answer, self.error, self.calls = answer, error, []

    async def check(self, message, **kw):  # type: ignore[no-untyped-def]
        self.calls.append(kw)
        if self.error:
            raise RspamdError(self.error)
        return self.answer

    async def close(self) -> None:
        pass


class FakePolicies:
    """Domain thresholds and user lists without a store."""

    def __init__(self, users=None, domains=None, defaults=(6.0, 15.0)):  # type: ignore[no-untyped-def]
        self.users, self.domains, self.defaults = users or {}, domains or {}, defaults

    def recipient(self, address, cached_only=False):  # type: ignore[no-untyped-def]
        from antispam.policy import RecipientPolicy

        domain = address.rsplit("@", 1)[1]
        junk, reject = self.domains.get(domain, self.defaults)
        allow, block = self.users.get(address, ((), ()))
        return RecipientPolicy(address, address.endswith("@ours.example"), tuple(allow), tuple(block), junk, reject, 0)

    def clear(self) -> None:
        pass


def scanner(answer=None, error=None, policies=None, **antispam):  # type: ignore[no-untyped-def]
    s = Scanner(cfg(**antispam), store=None, client=FakeClient(answer, error))
    s.policies = policies or FakePolicies()
    return s


def answer(score, action, symbols=None, **extra):  # type: ignore[no-untyped-def]
    return {"score": score, "required_score": 15.0, "action": action,
            "symbols": {n: {"name": n, "score": s} for n, s in (symbols or {}).items()}, **extra}


def check(s, raw=b"Subject: x\r\n\r\nbody\r\n", rcpts=("bob@ours.example",), mail_from="a@far.example"):  # type: ignore[no-untyped-def]
    return asyncio.run(s.check(raw, mail_from=mail_from, rcpts=list(rcpts), ip="192.0.2.1"))


def test_score_against_the_recipient_domains_thresholds() -> None:
    pol = FakePolicies(domains={"strict.example": (2.0, 8.0)})
    v = check(scanner(answer(9.0, "add header", {"A": 5.0, "B": 4.0}), policies=pol),
              rcpts=["bob@ours.example", "carol@strict.example"])
    # one SMTP answer: the most lenient recipient decides; the strict one gets it in Junk
    assert v.action == "junk" and v.reply is None
    assert v.junk("bob@ours.example") and v.junk("carol@strict.example")
    v = check(scanner(answer(9.0, "add header"), policies=pol), rcpts=["carol@strict.example"])
    assert v.action == "reject" and v.reply.startswith("550 5.7.1")


def test_forced_actions_are_kept() -> None:
    # GTUBE: rspamd says reject with score 0 -> not what the thresholds would say, so it was forced
    v = check(scanner(answer(0.0, "reject", {"GTUBE": 0.0}, messages={"smtp_message": "Gtube pattern"})))
    assert v.action == "reject" and "Gtube pattern" in v.reason
    v = check(scanner(answer(1.0, "soft reject", {"RATELIMITED": 0.0})))
    assert v.action == "soft_reject" and v.reply.startswith("451 4.7.1")


def test_allow_list_beats_a_reject_for_that_recipient_only() -> None:
    pol = FakePolicies(users={"bob@ours.example": (("far.example",), ())})
    v = check(scanner(answer(20.0, "reject"), policies=pol), rcpts=["bob@ours.example", "eve@ours.example"])
    assert v.action == "accept" and not v.junk("bob@ours.example") and v.junk("eve@ours.example")


def test_block_list_without_scanning() -> None:
    pol = FakePolicies(users={"bob@ours.example": ((), ("a@far.example",))})
    s = scanner(answer(0.0, "no action"), policies=pol, block_action="reject")
    v = check(s)
    assert v.action == "reject" and not v.checked and s.client.calls == []


def test_header_from_counts_for_the_lists() -> None:
    pol = FakePolicies(users={"bob@ours.example": (("boss@partner.example",), ())})
    s = scanner(answer(20.0, "reject"), policies=pol)
    v = check(s, raw=b"From: The Boss <Boss@Partner.Example>\r\nSubject: x\r\n\r\nhi\r\n", mail_from="bounce@mailer.example")
    assert v.action == "accept" and s.client.calls == []


def test_failure_policies() -> None:
    v = check(scanner(error="connection refused"))
    assert v.action == "accept" and v.headers == (("X-Spam-Status", "unchecked"),) and "connection refused" in v.reason
    v = check(scanner(error="connection refused", on_failure="tempfail"))
    assert v.action == "soft_reject" and v.reply == "451 4.7.1 Spam filter unavailable, try again later"
    s = scanner(answer(0.0, "no action"))
    s.available, s.problem = False, "rspamd is not installed"
    v = check(s)
    assert v.action == "accept" and v.reason == "rspamd is not installed" and s.client.calls == []
    assert check(scanner(answer(0.0, "reject"), enabled=False)).headers == ()


def test_headers_are_clean_and_folded() -> None:
    evil = {f"SYM_{i}": float(i) for i in range(40)}
    evil["BAD\r\nX-Injected: yes"] = 1.0
    v = check(scanner(answer(7.5, "add header", evil, milter={
        "add_headers": {"X-Spam-Status": "forged", "X-Extra": {"value": "a\r\nb", "order": 0}, "Bad Name": "x"},
        "remove_headers": {"X-Spam": 0}})))
    names = [n for n, _v in v.headers]
    assert names.count("X-Spam-Status") == 1 and "X-Extra" in names and "Bad Name" not in names
    for name, value in v.headers:
        for line in f"{name}: {value}".split("\r\n"):
            assert len(line) <= 78 and "\n" not in line and "\r" not in line
        assert "X-Injected:" not in value.replace("\r\n ", " ").split(": ")[0]
    assert dict(v.headers)["X-Extra"] == "a  b"
    assert "X-Spam" in v.remove_headers and "X-Spam-Status" in v.remove_headers
    assert _fold("X-Spam-Symbols", ["A(1.00)"]) == "A(1.00)"


def test_entries() -> None:
    assert normalise_entry(" Boss@Partner.Example ") == "boss@partner.example"
    assert normalise_entry("@Partner.Example") == normalise_entry("partner.example") == "partner.example"
    assert matches(["partner.example"], "x@mail.partner.example") == "partner.example"
    assert matches(["partner.example"], "x@notpartner.example") is None
    assert matches(["boss@partner.example"], "BOSS@partner.example") == "boss@partner.example"
    assert matches(["partner.example"], "") is None


# ---------------------------------------------------------------- the HTTP client


async def _server(handler):  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _read_request(reader):  # type: ignore[no-untyped-def]
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    return head, await reader.readexactly(length)


def test_http_keepalive_chunked_and_stale_connections() -> None:
    seen = []

    async def handler(reader, writer):  # type: ignore[no-untyped-def]
        n = 0
        while True:
            try:
                head, body = await _read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            seen.append((head, body))
            n += 1
            if n == 1:
                data = json.dumps({"n": len(seen)}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                await writer.drain()
                writer.close()  # a connection the pool keeps but the server has dropped
                break
            await writer.drain()

    async def main() -> None:
        server, url = await _server(handler)
        pool = HttpPool(url)
        r = await pool.request("POST", "/checkv2", headers=[("Rcpt", "a@x\r\nEvil: 1")], body=b"msg")
        assert r.status == 200 and json.loads(r.body) == {"n": 1}
        assert b"Rcpt: a@x  Evil: 1\r\n" in seen[0][0] and seen[0][1] == b"msg"
        r = await pool.request("GET", "/ping")  # same connection
        assert r.body == b"abcde"
        await asyncio.sleep(0.05)
        r = await pool.request("GET", "/again")  # the kept connection is dead: retried on a new one
        assert r.status == 200
        await pool.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_http_timeout_and_refused() -> None:
    async def slow(reader, writer):  # type: ignore[no-untyped-def]
        await asyncio.sleep(5)
        writer.close()

    async def main() -> None:
        server, url = await _server(slow)
        with pytest.raises(HttpError, match="no answer"):
            await HttpPool(url).request("GET", "/ping", timeout=0.2)
        server.close()
        port = server.sockets[0].getsockname()[1] if server.sockets else 1
        await server.wait_closed()
        with pytest.raises(HttpError, match="cannot connect"):
            await HttpPool(f"http://127.0.0.1:{port}").request("GET", "/ping", timeout=1)

    asyncio.run(main())


def test_every_antispam_message_has_chinese() -> None:
    import re
    from pathlib import Path

    import antispam  # noqa: F401 - registers the catalogue
    from antispam.outbound import _BODY, _SUBJECT
    from appliance.i18n import CATALOGUES

    root = Path(__file__).resolve().parent.parent
    zh = CATALOGUES["zh-CN"]
    call = re.compile(r'\bN?_\(\s*((?:"(?:[^"\\]|\\.)*"\s*)+)\)')
    missing = []
    for path in [*sorted((root / "antispam").glob("*.py")), root / "appliance" / "cli_antispam.py"]:
        for m in call.finditer(path.read_text()):
            template = eval(m.group(1).replace("\n", " "))  # noqa: S307 - string literals from our own source
            missing += _differs(zh, template, path.name)
    for template in (_BODY, _SUBJECT, "off", "unavailable", "antispam: {state} ({detail})", "no such quarantined message: {id}"):
        missing += _differs(zh, template, "extra")
    assert missing == []


def _differs(zh: dict, template: str, where: str) -> list[str]:
    import re

    if template not in zh:
        return [f"{where}: missing: {template}"]
    if sorted(re.findall(r"\{(\w+)", template)) != sorted(re.findall(r"\{(\w+)", zh[template])):
        return [f"{where}: placeholders differ: {template}"]
    return []
