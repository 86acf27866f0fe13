"""rspamd over HTTP, and the verdict the MTA acts on.

``RspamdClient`` speaks rspamd's protocol: POST the raw message to
``/checkv2`` on the normal worker with the envelope in headers (``IP``,
``Helo``, ``Hostname``, ``From``, one ``Rcpt`` per recipient, ``User``,
``Queue-ID``, ``Pass: all``), read the JSON answer (``action``, ``score``,
``required_score``, ``symbols``, ``milter.add_headers``); POST to
``/learnspam`` and ``/learnham`` on the controller with the ``Password``
header.

``Scanner.check`` turns that into a ``Verdict``: rspamd's score against the
recipient domains' thresholds, the recipients' allow and block lists, the
policy for when rspamd is down (``antispam.on_failure``), quarantine of
rejected mail, and the headers to add.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from appliance.i18n import _

from .http import HttpError, HttpPool
from .policy import PolicyCache, RecipientPolicy, header_from, matches

log = logging.getLogger("antispam")

ACCEPT, JUNK, SOFT_REJECT, REJECT = "accept", "junk", "soft_reject", "reject"
_SEVERITY = {ACCEPT: 0, JUNK: 1, SOFT_REJECT: 2, REJECT: 3}
_RSPAMD_ACTIONS = {
    "no action": ACCEPT,
    "greylist": SOFT_REJECT,
    "add header": JUNK,
    "rewrite subject": JUNK,
    "soft reject": SOFT_REJECT,
    "reject": REJECT,
    "discard": REJECT,
}
#: headers a sender must not set: the MTA removes them from incoming mail before adding ours
SPAM_HEADERS = ("X-Spam-Status", "X-Spam-Score", "X-Spam-Symbols", "X-Spam-Flag", "X-Spam", "X-Spamd-Result",
                "X-Spamd-Bar", "X-Rspamd-Action", "X-Rspamd-Queue-Id", "X-Rspamd-Server")
REPLY_REJECT = "550 5.7.1 Message rejected as spam"
REPLY_VIRUS = "550 5.7.1 Message rejected: it contains a virus"
VIRUS_SYMBOL = "CLAM_VIRUS"  # set by rspamd's antivirus module (antispam.virus_scan) with the virus names as options
REPLY_SOFT = "451 4.7.1 Message deferred by the spam filter, try again later"
REPLY_UNAVAILABLE = "451 4.7.1 Spam filter unavailable, try again later"
UNCHECKED = (("X-Spam-Status", "unchecked"),)


class RspamdError(Exception):
    """rspamd could not be asked or gave no usable answer."""


@dataclass(frozen=True)
class LearnResult:
    learned: bool
    already: bool = False  # rspamd had learned this message that way before
    detail: str = ""


class RspamdClient:
    """One rspamd: the normal worker at ``url``, the controller at ``controller_url``."""

    def __init__(self, url: str, controller_url: str, *, password_file: Path | None = None, timeout: float = 10.0) -> None:
        self.url = url
        self.controller_url = controller_url
        self.timeout = timeout
        self._scan = HttpPool(url)
        self._ctl = HttpPool(controller_url)
        self._password_file = password_file
        self._password: str | None = None

    def _controller_headers(self, reload: bool = False) -> list[tuple[str, str]]:
        if self._password_file is None:
            return []
        if self._password is None or reload:
            try:
                self._password = self._password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise RspamdError(f"cannot read the controller password {self._password_file}: {exc.strerror or exc}") from None
        return [("Password", self._password)]

    async def check(self, message: bytes, *, mail_from: str = "", rcpts: Sequence[str] = (), ip: str | None = None,
                    helo: str | None = None, hostname: str | None = None, user: str | None = None,
                    queue_id: str | None = None, timeout: float | None = None) -> dict:
        headers = [("Pass", "all"), ("From", mail_from or "<>")]
        headers += [("Rcpt", r) for r in rcpts]
        for name, value in (("IP", ip), ("Helo", helo), ("Hostname", hostname), ("User", user), ("Queue-ID", queue_id)):
            if value:
                headers.append((name, value))
        try:
            r = await self._scan.request("POST", "/checkv2", headers=headers, body=message, timeout=timeout or self.timeout)
        except HttpError as exc:
            raise RspamdError(str(exc)) from None
        return _json(r.status, r.body, "checkv2")

    async def learn(self, kind: str, message: bytes, *, timeout: float | None = None) -> LearnResult:
        """Teach rspamd's Bayes classifier that ``message`` is ``"spam"`` or ``"ham"``."""
        if kind not in ("spam", "ham"):
            raise ValueError(kind)
        for attempt in (0, 1):
            try:
                r = await self._ctl.request("POST", f"/learn{kind}", headers=self._controller_headers(reload=attempt == 1),
                                            body=message, timeout=timeout or max(self.timeout, 30.0))
            except HttpError as exc:
                raise RspamdError(str(exc)) from None
            if r.status in (401, 403) and attempt == 0 and self._password_file is not None:
                continue  # the password file may have been regenerated
            break
        if r.status == 208:
            return LearnResult(False, already=True, detail=_error_text(r.body))
        if r.status == 204:
            return LearnResult(False, detail="nothing to learn (too few tokens)")
        data = _json(r.status, r.body, f"learn{kind}")
        return LearnResult(bool(data.get("success")), detail=str(data.get("error") or ""))

    async def stat(self) -> dict:
        """The controller's /stat (scanned, learned, actions, statfiles...)."""
        try:
            r = await self._ctl.request("GET", "/stat", headers=self._controller_headers(), timeout=self.timeout)
        except HttpError as exc:
            raise RspamdError(str(exc)) from None
        return _json(r.status, r.body, "stat")

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            r = await self._scan.request("GET", "/ping", timeout=timeout)
        except HttpError:
            return False
        return r.status == 200

    async def close(self) -> None:
        await self._scan.close()
        await self._ctl.close()


def _virus(result: dict) -> str | None:
    """The virus names rspamd's antivirus module reported, or None."""
    symbols = result.get("symbols")
    hit = symbols.get(VIRUS_SYMBOL) if isinstance(symbols, dict) else None
    if not isinstance(hit, dict):
        return None
    names = [str(o) for o in hit.get("options") or [] if o]
    return ", ".join(names)[:200] or "unknown"


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error") or "")
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


def _json(status: int, body: bytes, what: str) -> dict:
    if status != 200:
        raise RspamdError(f"{what}: HTTP {status}: {_error_text(body)}")
    try:
        data = json.loads(body)
    except ValueError:
        raise RspamdError(f"{what}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise RspamdError(f"{what}: unexpected answer")
    return data


# ---------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Verdict:
    """What to do with one message.

    ``action``: ``accept`` (deliver), ``junk`` (deliver into Junk),
    ``soft_reject`` (answer ``reply``, a 4xx) or ``reject`` (answer
    ``reply``, a 5xx). When the message is accepted, ``junk(rcpt)`` says per
    recipient whether it goes to that user's Junk folder (allow and block
    lists differ between recipients). ``headers`` are added to the message
    as they are (values may be folded); ``remove_headers`` are removed from
    it first, so a sender cannot forge a verdict.
    """

    action: str
    score: float | None = None
    required: float | None = None
    symbols: tuple[tuple[str, float], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    checked: bool = False
    reply: str | None = None
    recipients: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    quarantine_id: str | None = None
    remove_headers: tuple[str, ...] = SPAM_HEADERS

    def junk(self, rcpt: str) -> bool:
        """Should the copy for ``rcpt`` go to the Junk folder?"""
        return self.recipients.get(rcpt.lower(), self.action) in (JUNK, REJECT)

    @property
    def is_spam(self) -> bool:
        return self.action in (JUNK, REJECT) or any(a in (JUNK, REJECT) for a in self.recipients.values())


def action_for_score(score: float, junk: float, reject: float) -> str:
    if score >= reject:
        return REJECT
    if score >= junk:
        return JUNK
    return ACCEPT


def _fold(name: str, items: list[str], width: int = 78) -> str:
    """``items`` joined by ", ", folded (CRLF + space) so no header line exceeds ``width``."""
    lines: list[str] = []
    line = ""
    for item in items:
        candidate = f"{line}, {item}" if line else item
        room = width - len(name) - 2 if not lines else width - 1
        if line and len(candidate) + 1 > room:
            lines.append(line + ",")
            line = item
        else:
            line = candidate
    lines.append(line)
    return "\r\n ".join(lines)


def _clean(value: Any, limit: int = 900) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in str(value))[:limit].strip()


class Scanner:
    """The MTA's entry point: ``await scanner.check(raw, mail_from=..., rcpts=[...], ...)``.

    Never raises for rspamd's sake: when rspamd is missing, down or slow the
    verdict follows ``antispam.on_failure`` (accept with
    ``X-Spam-Status: unchecked``, or a 4xx so the sender retries).
    """

    def __init__(self, cfg: Any, store: Any, *, client: RspamdClient | None = None, available: bool = True,
                 problem: str | None = None, quarantine: Any = None, executor: Any = None) -> None:
        a = cfg.antispam
        self.cfg = cfg
        self.enabled = bool(a.enabled)
        self.client = client or RspamdClient(a.url, a.controller_url, password_file=Path(a.controller_password_file),
                                             timeout=a.timeout)
        self.available = available
        self.problem = problem
        self.on_failure = a.on_failure
        self.max_scan_size = a.max_scan_size
        self.block_action = a.block_action
        self.virus_scan = bool(getattr(a, "virus_scan", False))  # allow lists skip the spam scan, not this one
        self.policies = PolicyCache(store, cfg)
        self.quarantine = quarantine
        self.executor = executor
        self.stats = {"scanned": 0, "failed": 0, "unchecked": 0, ACCEPT: 0, JUNK: 0, SOFT_REJECT: 0, REJECT: 0}
        self._last_failure_log = 0.0

    async def check(self, message: bytes, *, mail_from: str, rcpts: Sequence[str], ip: str | None = None,
                    helo: str | None = None, hostname: str | None = None, user: str | None = None,
                    queue_id: str | None = None) -> Verdict:
        if not self.enabled:
            return Verdict(ACCEPT, reason="spam filtering is off")
        rcpts = [r.lower() for r in rcpts]
        try:
            policies = [self.policies.recipient(r, cached_only=True) for r in rcpts]
        except KeyError:
            try:
                policies = await asyncio.get_running_loop().run_in_executor(self.executor, self._policies, rcpts)
            except Exception as exc:  # noqa: BLE001 - the store is down: scan with the defaults, no lists
                log.warning("recipient spam settings unavailable (%s); using the defaults", exc)
                a = self.cfg.antispam
                policies = [RecipientPolicy(r, False, (), (), a.junk_score, a.reject_score, 0) for r in rcpts]
        listed: dict[str, tuple[str, str] | None] = {}
        if any(p.allow or p.block for p in policies):
            senders = [mail_from.lower()] if mail_from else []
            senders += [a for a in header_from(message) if a not in senders]
            listed = {p.address: self._listed(p, senders) for p in policies}
        # allow lists skip the spam scan, but not the virus scan
        if (not self.virus_scan and policies and listed
                and all(listed.get(p.address) and listed[p.address][0] == "allow" for p in policies)):
            return self._count(Verdict(ACCEPT, headers=(("X-Spam-Status", "No, allowlisted"),),
                                       reason=_("sender on the recipients' allow lists")))
        if policies and listed and all(listed.get(p.address) and listed[p.address][0] == "block" for p in policies):
            return await self._finish(self._blocked(rcpts), message, mail_from, rcpts, policies, queue_id, ip)
        if not self.available:
            return self._count(Verdict(ACCEPT, headers=UNCHECKED, reason=self.problem or _("spam filter unavailable")), unchecked=True)
        if len(message) > self.max_scan_size:
            return self._count(Verdict(ACCEPT, headers=UNCHECKED, reason=_("message too large to scan")), unchecked=True)
        try:
            result = await self.client.check(message, mail_from=mail_from, rcpts=rcpts, ip=ip, helo=helo,
                                             hostname=hostname, user=user, queue_id=queue_id)
        except RspamdError as exc:
            return self._failure(str(exc))
        verdict = self._decide(result, policies, listed)
        return await self._finish(verdict, message, mail_from, rcpts, policies, queue_id, ip)

    # -- pieces ------------------------------------------------------------

    def _policies(self, rcpts: list[str]) -> list[RecipientPolicy]:
        return [self.policies.recipient(r) for r in rcpts]

    @staticmethod
    def _listed(p: RecipientPolicy, senders: list[str]) -> tuple[str, str] | None:
        if not p.local:
            return None
        for s in senders:
            hit = matches(p.allow, s)
            if hit:
                return ("allow", hit)
        for s in senders:
            hit = matches(p.block, s)
            if hit:
                return ("block", hit)
        return None

    def _blocked(self, rcpts: list[str]) -> Verdict:
        action = REJECT if self.block_action == REJECT else JUNK
        return Verdict(action, headers=(("X-Spam-Status", "Yes, blocklisted"), ("X-Spam-Flag", "YES")),
                       reason=_("sender on the recipients' block lists"), reply=REPLY_REJECT if action == REJECT else None,
                       recipients=MappingProxyType(dict.fromkeys(rcpts, action)))

    def _failure(self, error: str) -> Verdict:
        self.stats["failed"] += 1
        now = time.monotonic()
        if now - self._last_failure_log > 60:
            self._last_failure_log = now
            log.warning("rspamd unavailable (%s): mail is %s", error,
                        "deferred (4xx)" if self.on_failure == "tempfail" else "accepted unchecked")
        reason = _("spam filter unavailable: {error}").format(error=error)
        if self.on_failure == "tempfail":
            return self._count(Verdict(SOFT_REJECT, reason=reason, reply=REPLY_UNAVAILABLE))
        return self._count(Verdict(ACCEPT, headers=UNCHECKED, reason=reason), unchecked=True)

    def _decide(self, result: dict, policies: list[RecipientPolicy], listed: dict[str, tuple[str, str] | None]) -> Verdict:
        a = self.cfg.antispam
        try:
            score = float(result.get("score") or 0.0)
        except (TypeError, ValueError):
            score = 0.0
        rspamd_action = _RSPAMD_ACTIONS.get(str(result.get("action")), ACCEPT)
        # rspamd's own action differs from what its score gives under the global thresholds when a
        # rule forced it (GTUBE, greylisting, rate limits): keep that one; else apply per-domain thresholds
        forced = rspamd_action != action_for_score(score, a.junk_score, a.reject_score)
        per: dict[str, str] = {}
        why: dict[str, str] = {}
        virus = _virus(result)
        for p in policies or [RecipientPolicy("", False, (), (), a.junk_score, a.reject_score, a.quarantine_days)]:
            hit = listed.get(p.address)
            if virus is not None:  # no allow list lets a virus through
                per[p.address], why[p.address] = REJECT, _("virus found: {name}").format(name=virus)
            elif hit and hit[0] == "allow":
                per[p.address], why[p.address] = ACCEPT, _("sender {entry} on the allow list of {rcpt}").format(entry=hit[1], rcpt=p.address)
            elif hit:
                per[p.address] = REJECT if self.block_action == REJECT else JUNK
                why[p.address] = _("sender {entry} on the block list of {rcpt}").format(entry=hit[1], rcpt=p.address)
            elif forced:
                per[p.address] = rspamd_action
                msg = (result.get("messages") or {}).get("smtp_message") if isinstance(result.get("messages"), dict) else None
                why[p.address] = _("rspamd: {action}").format(action=msg or result.get("action"))
            else:
                per[p.address] = action_for_score(score, p.junk, p.reject)
                why[p.address] = _("score {score:.2f}, junk from {junk:g}, reject from {reject:g}").format(
                    score=score, junk=p.junk, reject=p.reject)
        action = min(per.values(), key=_SEVERITY.__getitem__)
        # one SMTP answer covers every recipient: if the message is accepted, those who would
        # have rejected it get it in Junk, a deferral counts as accepted
        filing = {r: (JUNK if act in (JUNK, REJECT) else ACCEPT) for r, act in per.items() if r}
        required = min((p.junk for p in policies), default=a.junk_score)
        symbols = _symbols(result.get("symbols"))
        spam = action in (JUNK, REJECT) or JUNK in filing.values()
        headers: list[tuple[str, str]] = [
            ("X-Spam-Status", f"{'Yes' if spam else 'No'}, score={score:.2f} required={required:.1f}"),
            ("X-Spam-Score", f"{score:.2f}"),
        ]
        if symbols:
            headers.append(("X-Spam-Symbols", _fold("X-Spam-Symbols", [f"{n}({s:.2f})" for n, s in symbols[:60]])))
        if spam:
            headers.append(("X-Spam-Flag", "YES"))
        headers += _milter_headers(result, {h.lower() for h, _v in headers})
        reason = next(iter(why.values())) if len(set(why.values())) == 1 else "; ".join(f"{r}: {w}" for r, w in why.items())
        reply = (REPLY_VIRUS if virus is not None else REPLY_REJECT) if action == REJECT else REPLY_SOFT if action == SOFT_REJECT else None
        removes = tuple(dict.fromkeys([*SPAM_HEADERS, *_milter_removes(result)]))
        return Verdict(action, score=score, required=required, symbols=tuple(symbols), headers=tuple(headers),
                       reason=reason, checked=True, reply=reply, recipients=MappingProxyType(filing), remove_headers=removes)

    async def _finish(self, verdict: Verdict, message: bytes, mail_from: str, rcpts: list[str],
                      policies: list[RecipientPolicy], queue_id: str | None, ip: str | None) -> Verdict:
        if verdict.action == REJECT and self.quarantine is not None:
            keep = [p for p in policies if p.local and p.quarantine_days > 0]
            if keep:
                days = max(p.quarantine_days for p in keep)
                try:
                    qid = await asyncio.get_running_loop().run_in_executor(
                        self.executor, lambda: self.quarantine.hold(
                            message, sender=mail_from, recipients=[p.address for p in keep], days=days,
                            score=verdict.score, reason=verdict.reason, queue_id=queue_id, ip=ip,
                            symbols=verdict.symbols))
                except Exception as exc:  # noqa: BLE001 - a full disk must not turn a reject into a crash
                    log.warning("cannot quarantine a rejected message: %s", exc)
                else:
                    verdict = dataclasses.replace(verdict, quarantine_id=qid)
        return self._count(verdict, scanned=verdict.checked)

    def _count(self, verdict: Verdict, *, unchecked: bool = False, scanned: bool = False) -> Verdict:
        self.stats[verdict.action] += 1
        if unchecked:
            self.stats["unchecked"] += 1
        if scanned:
            self.stats["scanned"] += 1
        return verdict

    async def close(self) -> None:
        await self.client.close()


def _symbols(raw: Any) -> list[tuple[str, float]]:
    out = []
    if isinstance(raw, dict):
        for name, sym in raw.items():
            try:
                score = float(sym.get("score", 0.0)) if isinstance(sym, dict) else 0.0
            except (TypeError, ValueError):
                score = 0.0
            out.append((_clean(name, 100), score))
    out.sort(key=lambda x: (-abs(x[1]), x[0]))
    return out


def _milter_headers(result: dict, taken: set[str]) -> list[tuple[str, str]]:
    milter = result.get("milter")
    add = milter.get("add_headers") if isinstance(milter, dict) else None
    out: list[tuple[str, str]] = []
    if not isinstance(add, dict):
        return out
    for name, spec in add.items():
        if not isinstance(name, str) or not name.replace("-", "").isalnum() or name.lower() in taken:
            continue
        values = spec if isinstance(spec, list) else [spec]
        for v in values:
            value = v.get("value") if isinstance(v, dict) else v
            if value is not None:
                out.append((name, _clean(value)))
    return out


def _milter_removes(result: dict) -> list[str]:
    milter = result.get("milter")
    rm = milter.get("remove_headers") if isinstance(milter, dict) else None
    if not isinstance(rm, dict):
        return []
    return [n for n in rm if isinstance(n, str) and n.replace("-", "").isalnum()]
