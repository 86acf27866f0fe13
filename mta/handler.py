"""aiosmtpd handler: a thin translation from SMTP verbs to policy and store calls.

One ``Handler`` per listener kind ("mx" on port 25, "submission" on
587/465). Every blocking call (directory, Argon2, SPF/DKIM/DMARC, ingest) runs
in ``ctx.executor``; nothing here touches SQL or files.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult

from . import headers
from .delivery import Accepted, Deliverer, DeliveryLog
from .mailauth import MailAuth
from .policy import NotCached, Policy, Verdict, from_cache
from .protocol import MtaEnvelope, MtaSMTP
from .queue import new_queue_id
from .replies import R, reply_code

log = logging.getLogger("mta")


@dataclass
class Shared:
    """What every listener's handler shares."""

    store: Any
    executor: Any
    hostname: str
    max_recipients: int
    reject_dmarc: bool
    policy: Policy
    mailauth: MailAuth
    deliverer: Deliverer
    events: DeliveryLog
    scanner: Any = None  # antispam.Scanner (port 25), or None
    outbound: Any = None  # mta.handler.OutboundGuard (submission), or None
    max_message_size: int = 0  # smtp.max_message_size; the policy of the same name wins when set
    autoreplies: Any = None  # mta.autoreply.AutoReplies, or None


@dataclass(frozen=True)
class SenderState:
    """What ``Handler._sender_state`` found at MAIL: the credential epoch now, why the session's
    credentials no longer hold (a ``session_check`` reason) or None, the frozen-account reply or None."""

    epoch: int
    revoked: str | None
    frozen: str | None


def _size_option(options: list[str]) -> int:
    for opt in options:
        if opt.startswith("SIZE="):
            try:
                return int(opt[5:])
            except ValueError:
                return 0
    return 0


def _with_protocol(server: MtaSMTP, envelope: MtaEnvelope, authenticated: bool) -> str:
    """RFC 3848 / 6531 'with' keyword: ESMTP, ESMTPS, ESMTPSA, UTF8SMTPS..."""
    base = "UTF8SMTP" if envelope.smtp_utf8 else "ESMTP"
    return base + ("S" if server.secure else "") + ("A" if authenticated else "")


class OutboundGuard:
    """Submission side of antispam.outbound: frozen accounts and per-account sending limits ([limits]).

    Blocking methods (executor). A failure of this bookkeeping never refuses
    or loses a message.
    """

    def __init__(self, store: Any, limits: Any, policy: Policy | None = None) -> None:
        from antispam import outbound

        self._outbound = outbound
        self._s = store
        self._limits = limits
        self._policy = policy

    def limits(self) -> Any:
        """``[limits]`` as antispam.outbound.Limits, with messages per hour from the policy
        ``outbound_per_hour`` when the admin set one (panel). Blocking (cached policy read)."""
        base = self._outbound.Limits.from_config(self._limits)
        if self._policy is None:
            return base
        per_hour = self._policy.outbound_per_hour(base.messages_per_hour)
        return base if per_hour == base.messages_per_hour else dataclasses.replace(base, messages_per_hour=per_hour)

    def failed(self, email: str, count: int) -> None:
        """``count`` recipients of ``email``'s mail bounced (permanent failures, DSN sent)."""
        self._outbound.record_failure(self._s, email, count, limits=self.limits())

    def frozen_reply(self, email: str) -> str | None:
        try:
            frozen = self._outbound.is_frozen(self._s, email)
        except Exception:  # noqa: BLE001
            log.exception("outbound freeze check for %s failed", email)
            return None
        return frozen.reply if frozen else None

    def submitted(self, msg: Accepted) -> None:
        if not msg.auth_user:
            return
        try:
            self._outbound.record_submission(self._s, msg.auth_user, msg.rcpt, limits=self.limits())
        except Exception:  # noqa: BLE001
            log.exception("outbound accounting for %s failed", msg.auth_user)


class Handler:
    def __init__(self, shared: Shared, *, kind: str, listener: str) -> None:
        self.shared = shared
        self.kind = kind
        self.listener = listener
        self.submission = kind == "submission"

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.shared.executor, functools.partial(fn, *args, **kwargs))

    async def _policy(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a Policy lookup inline when the cache has the answer, else in the executor."""
        try:
            return from_cache(fn, *args, **kwargs)
        except NotCached:
            return await self._run(fn, *args, **kwargs)

    def _log_later(self, *args: Any, **kwargs: Any) -> None:
        """Queue a log event (DeliveryLog.write only appends to a buffer)."""
        self.shared.events.write(*args, **kwargs)

    async def size_limit(self) -> int:
        """The largest message now (MtaSMTP asks at EHLO/HELO and MAIL): policy, else config."""
        return await self._policy(self.shared.policy.max_message_size, self.shared.max_message_size)

    # ---------------------------------------------------------------- EHLO
    async def handle_EHLO(self, server: MtaSMTP, session: Any, envelope: MtaEnvelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        lines = [r for r in responses[:-1] if not (self.kind == "mx" and r.startswith("250-AUTH"))]
        return [*lines, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP"]

    # ---------------------------------------------------------------- AUTH
    async def auth_PLAIN(self, server: MtaSMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await server.push(R.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push(R.AUTH_BAD_PLAIN)
            return AuthResult(success=False, handled=True)
        authz, login, password = parts
        if authz and authz != login:
            return AuthResult(success=False, handled=False, message=R.AUTH_FAILED)
        return await self._authenticate(server, login, password)

    async def auth_LOGIN(self, server: MtaSMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth("Username:")
            if login is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await server.push(R.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, login, password)

    async def _authenticate(self, server: MtaSMTP, login: bytes, password: bytes) -> AuthResult:
        outcome = await self._run(
            self.shared.store.auth.authenticate,
            login.decode("utf-8", "replace"),
            password.decode("utf-8", "replace"),
            protocol="smtp",
            ip=server.peer_ip,
            client=None,
        )
        if outcome.ok:
            # what the login proved, for the revocation check at every MAIL (``_revoked``)
            server.login_credential = outcome.credential
            server.login_epoch = outcome.epoch
            return AuthResult(success=True, auth_data=outcome.user, message=R.AUTH_OK)
        await asyncio.sleep(outcome.delay)
        reply = {"locked": R.AUTH_LOCKED, "ip_blocked": R.AUTH_IP_BLOCKED, "disabled": R.AUTH_DISABLED}.get(outcome.reason, R.AUTH_FAILED)
        return AuthResult(success=False, handled=False, message=reply)

    # ---------------------------------------------------------------- MAIL
    async def handle_MAIL(self, server: MtaSMTP, session: Any, envelope: MtaEnvelope, address: str,
                          mail_options: list[str]) -> str:
        sender = "" if address == "<>" else address
        if self.submission:
            user = session.auth_data
            state = await self._run(self._sender_state, user, server.login_credential, server.login_epoch)
            if state.revoked is not None:
                log.info("smtp session of %s from %s ended: %s", user.email, server.peer_ip, state.revoked)
                server.close_after_reply(R.AUTH_REVOKED_CLOSE)
                return R.AUTH_REVOKED.get(state.revoked, R.AUTH_REVOKED["ended"])
            server.login_epoch = state.epoch
            if state.frozen:
                return state.frozen
            if not sender or not await self._policy(self.shared.policy.may_send_as, user, sender):
                return R.MAIL_NOT_YOURS
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.declared_size = _size_option(mail_options)
        return R.MAIL_OK

    def _sender_state(self, user: Any, credential: str | None, epoch: int) -> SenderState:
        """In the executor, at every MAIL of an authenticated session: do its credentials still hold, and
        may the account send?

        The credential epoch is one primary-key read; only when it moved since the login (a password
        change, an app password revoked, the account disabled, "this wasn't me"...) does
        ``session_check`` say whether this session's own credential is affected. A database error
        here does not end the session: the store is then unusable for the message anyway.
        """
        store = self.shared.store
        now = epoch
        try:
            current = store.directory.auth_epochs([user.id]).get(user.id)
            if current != epoch:
                reason = store.auth.session_check(user.id, credential, epoch, protocol="smtp")
                if reason is not None:
                    return SenderState(epoch, reason, None)
                now = epoch if current is None else current
        except Exception:  # noqa: BLE001
            log.exception("credential check of %s failed", user.email)
        frozen = self.shared.outbound.frozen_reply(user.email) if self.shared.outbound is not None else None
        return SenderState(now, None, frozen)

    # ---------------------------------------------------------------- RCPT
    def _check_rcpt(self, session: Any, envelope: MtaEnvelope, address: str) -> Verdict:
        policy = self.shared.policy
        if envelope.identities is None:
            if self.submission:
                envelope.identities = policy.identities_for_user(session.auth_data)
            else:
                sender = "" if envelope.mail_from == "<>" else (envelope.mail_from or "")
                envelope.identities = policy.identities_for_envelope(sender)
        ids, domains = envelope.identities
        return policy.check_recipient(address, submission=self.submission, identities=ids, identity_domains=domains,
                                      declared_size=envelope.declared_size)

    async def handle_RCPT(self, server: MtaSMTP, session: Any, envelope: MtaEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.shared.max_recipients:
            envelope.rejected.append((address, R.RCPT_TOO_MANY))
            return R.RCPT_TOO_MANY
        verdict = await self._policy(self._check_rcpt, session, envelope, address)
        if not verdict.accepted:
            envelope.rejected.append((address, verdict.reply))
            return verdict.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        for u in verdict.users:
            envelope.local.setdefault(u.email, u)
        for e in verdict.external:
            envelope.remote.setdefault(e, None)
        envelope.skipped.update(verdict.skipped)
        return R.RCPT_OK

    # ---------------------------------------------------------------- DATA
    async def handle_DATA(self, server: MtaSMTP, session: Any, envelope: MtaEnvelope) -> str:
        raw: bytes = envelope.content  # type: ignore[assignment]
        qid = new_queue_id()
        sender = "" if envelope.mail_from == "<>" else (envelope.mail_from or "")
        shared = self.shared
        user = session.auth_data if self.submission else None
        if self.submission:
            froms = headers.from_addresses(raw)
            if froms is None:
                return self._refused(server, envelope, qid, R.DATA_NO_FROM, len(raw))
            allowed = await self._policy(lambda: all(shared.policy.may_send_as(user, a) for a in froms))
            if not allowed:
                return self._refused(server, envelope, qid, R.DATA_FROM_NOT_YOURS, len(raw), {"from": froms})
            raw = headers.submission_fixups(raw, hostname=shared.hostname, queue_id=qid)
        received = headers.received(
            helo=session.host_name or "",
            ip=server.peer_ip,
            hostname=shared.hostname,
            protocol=_with_protocol(server, envelope, user is not None),
            queue_id=qid,
            tls=server.tls_info(),
            recipient=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None,
        )
        msg = Accepted(
            queue_id=qid,
            sender=sender,
            rcpt=list(envelope.rcpt_tos),
            local=list(envelope.local.values()),
            remote=list(envelope.remote),
            raw=raw,
            ip=server.peer_ip,
            listener=self.listener,
            auth_user=user.email if user is not None else None,
            skipped=dict(envelope.skipped),
            rejected=list(envelope.rejected),
        )
        envelope.finished = True
        helo = session.host_name or ""
        scanner = shared.scanner
        if self.submission or scanner is None or not scanner.enabled:
            return await self._run(self._finish, msg, received, helo)
        refusal = await self._run(self._checks, msg, received, helo)
        if refusal is not None:
            return refusal
        refusal = await self._scan(scanner, msg, helo)
        if refusal is not None:
            return refusal
        return await self._run(shared.deliverer.deliver, msg)

    def _finish(self, msg: Accepted, received: bytes, helo: str) -> str:
        """In the executor: the checks and the delivery in one hop. Returns the DATA reply."""
        refusal = self._checks(msg, received, helo)
        if refusal is not None:
            return refusal
        reply = self.shared.deliverer.deliver(msg)
        if self.submission and reply.startswith("250") and self.shared.outbound is not None:
            self.shared.outbound.submitted(msg)
        return reply

    def _checks(self, msg: Accepted, received: bytes, helo: str) -> str | None:
        """In the executor. Port 25: SPF, DKIM, DMARC (a DMARC p=reject failure refuses the message);
        then the trace fields go on top. Returns a refusal reply, or None to go on."""
        shared = self.shared
        trace = b""
        if not self.submission:
            try:
                verdict = shared.mailauth.check(msg.raw, ip=msg.ip, helo=helo, mail_from=msg.sender)
            except Exception:  # noqa: BLE001 - a checker bug must not lose mail
                log.exception("mail authentication of %s failed", msg.queue_id)
                verdict = None
            if verdict is not None:
                msg.checks = {"spf": verdict.spf, "dkim": verdict.dkim, "dmarc": verdict.dmarc}
                if verdict.dmarc_reject and shared.reject_dmarc:
                    detail = {"listener": self.listener, "rcpt": msg.rcpt, "reply": R.DATA_DMARC_REJECT,
                              "checks": msg.checks, "from_domain": verdict.from_domain}
                    shared.events.write(msg.queue_id, msg.sender, msg.rcpt, len(msg.raw), "rejected", ip=msg.ip, detail=detail)
                    return R.DATA_DMARC_REJECT
                trace = verdict.header.encode("utf-8", "surrogateescape") + b"\r\n"
                msg.raw = headers.strip_auth_results(msg.raw, shared.hostname)
        msg.raw = received + trace + msg.raw
        return None

    async def _scan(self, scanner: Any, msg: Accepted, helo: str) -> str | None:
        """Port 25: the antispam verdict (rspamd). Returns a refusal reply, or None after filing
        the verdict's headers into the message and choosing Junk per recipient.

        rspamd's ``Hostname`` is the client's forward-confirmed reverse DNS name; the MTA does
        not look that up, so it is left out and rspamd resolves it itself (never our own name)."""
        try:
            verdict = await scanner.check(msg.raw, mail_from=msg.sender, rcpts=[u.email for u in msg.local], ip=msg.ip,
                                          helo=helo, hostname=None, queue_id=msg.queue_id)
        except Exception:  # noqa: BLE001 - the scanner promises not to raise; if it does, deliver unscanned
            log.exception("spam check of %s failed", msg.queue_id)
            return None
        msg.checks["spam"] = verdict.action if verdict.score is None else f"{verdict.action} {verdict.score:.1f}"
        if verdict.reply:
            detail = {"listener": self.listener, "rcpt": msg.rcpt, "reply": verdict.reply, "checks": msg.checks,
                      "reason": verdict.reason}
            if verdict.quarantine_id:
                detail["quarantine_id"] = verdict.quarantine_id
            result = "deferred" if verdict.reply.startswith("4") else "rejected"
            self.shared.events.write(msg.queue_id, msg.sender, msg.rcpt, len(msg.raw), result, ip=msg.ip, detail=detail)
            return verdict.reply
        added = b"".join(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape") for name, value in verdict.headers)
        msg.raw = added + headers.remove_fields(msg.raw, verdict.remove_headers)
        msg.junk = {u.email for u in msg.local if verdict.junk(u.email)}
        return None

    def _refused(self, server: MtaSMTP, envelope: MtaEnvelope, qid: str, reply: str, size: int,
                 detail: dict[str, Any] | None = None) -> str:
        envelope.finished = True
        self._log_refusal(server, envelope, qid, reply, size, detail)
        return reply

    def _log_refusal(self, server: MtaSMTP, envelope: MtaEnvelope, qid: str, reply: str, size: int,
                     detail: dict[str, Any] | None = None) -> None:
        sender = "" if envelope.mail_from == "<>" else (envelope.mail_from or "")
        d: dict[str, Any] = {"listener": self.listener, "rcpt": list(envelope.rcpt_tos), "reply": reply}
        if envelope.rejected:
            d["rejected"] = dict(envelope.rejected)
        if self.submission and server.session is not None and server.session.auth_data is not None:
            d["auth"] = server.session.auth_data.email
        d.update(detail or {})
        result = "deferred" if reply_code(reply) < 500 else "rejected"
        recipients = list(envelope.rcpt_tos) or [a for a, _ in envelope.rejected]
        self._log_later(qid, sender, recipients, size, result, ip=server.peer_ip, detail=d)

    # ------------------------------------------------- called by MtaSMTP
    def data_refused(self, server: MtaSMTP, envelope: MtaEnvelope, reply: str, size: int) -> None:
        """DATA failed a protocol limit (size, line length, bare CR, header size)."""
        envelope.finished = True
        self._log_refusal(server, envelope, new_queue_id(), reply, size)

    def envelope_done(self, server: MtaSMTP, envelope: MtaEnvelope) -> None:
        """A transaction ends (DATA, RSET, new EHLO, disconnect): log it if it was refused before DATA."""
        if envelope.finished or not envelope.rejected:
            return
        envelope.finished = True
        self._log_refusal(server, envelope, new_queue_id(), envelope.rejected[-1][1], 0)

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %s", error, exc_info=error)
        return R.INTERNAL
