"""IMAP commands of the not-authenticated state: STARTTLS, LOGIN, AUTHENTICATE; and ID."""

from __future__ import annotations

import functools
from typing import Any

from .login import FAILURE_TEXT, b64_text, decode_plain, login
from .parser import Args, ParseError
from .replies import Reply

MECHANISMS = ("PLAIN", "LOGIN")


class AuthCommands:
    async def c_starttls(self: Any, tag: str, args: Args) -> None:
        args.end()
        if self.secure:
            raise Reply(b"BAD TLS is already active")
        if not self.starttls_allowed or self.shared.tls_options is None:
            raise Reply(b"BAD STARTTLS is not offered on this port")
        self.send(tag.encode() + b" OK Begin TLS negotiation now\r\n")  # in clear, before the handshake
        # Whatever the client sent after STARTTLS was sent in clear: drop it.
        self._buf.clear()
        self._pos = 0
        self._queue.clear()
        self.start_tls()

    def _plaintext_refused(self: Any) -> bool:
        return not self.secure and self.starttls_allowed

    async def c_login(self: Any, tag: str, args: Args) -> None:
        user = args.astring("user name")
        password = args.astring("password")
        args.end()
        if self._plaintext_refused():
            raise Reply(b"NO [PRIVACYREQUIRED] Use STARTTLS before LOGIN")
        try:
            u, p = user.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("User name and password must be UTF-8") from None
        await self._finish_login(tag, u, p)

    async def c_authenticate(self: Any, tag: str, args: Args) -> None:
        mech = args.atom("mechanism").upper()
        initial = args.astring("initial response") if args.more() else None
        args.end()
        if mech not in MECHANISMS:
            raise Reply(b"NO [CANNOT] Unsupported authentication mechanism")
        if self._plaintext_refused():
            raise Reply(b"NO [PRIVACYREQUIRED] Use STARTTLS before AUTHENTICATE")
        if mech == "PLAIN":
            if initial is None:
                self.send(b"+ \r\n")
                initial = await self.read_line()
            elif initial == b"=":
                initial = b""
            if initial == b"*":
                raise Reply(b"BAD Authentication cancelled")
            creds = decode_plain(initial)
            if creds is None:
                raise Reply(b"BAD Malformed PLAIN response")
        else:
            if initial is not None:
                username = b64_text(initial)
            else:
                self.send(b"+ VXNlcm5hbWU6\r\n")
                line = await self.read_line()
                if line == b"*":
                    raise Reply(b"BAD Authentication cancelled")
                username = b64_text(line)
            self.send(b"+ UGFzc3dvcmQ6\r\n")
            line = await self.read_line()
            if line == b"*":
                raise Reply(b"BAD Authentication cancelled")
            password = b64_text(line)
            if username is None or password is None:
                raise Reply(b"BAD Malformed LOGIN response")
            creds = (username, password)
        await self._finish_login(tag, *creds)

    async def _finish_login(self: Any, tag: str, username: str, secret: str) -> None:
        result = await login(self, "imap", username, secret)
        if result.ok:
            self.tagged(tag, b"OK [CAPABILITY " + self.capabilities() + b"] Logged in")
            return
        self.auth_failures += 1
        if result.reason in ("locked", "ip_blocked"):
            text = b"NO [UNAVAILABLE] " + FAILURE_TEXT[result.reason].encode()
        elif result.reason == "disabled":
            text = b"NO [CONTACTADMIN] " + FAILURE_TEXT["disabled"].encode()
        elif result.reason == "limit":
            text = b"NO [LIMIT] " + FAILURE_TEXT["limit"].encode()
        else:
            text = b"NO [AUTHENTICATIONFAILED] Authentication failed"
        self.tagged(tag, text)
        if self.auth_failures >= self.shared.limits.max_auth_failures:
            self.close(b"* BYE Too many failed logins\r\n")

    async def _name_client_late(self: Any) -> None:
        """ID after LOGIN (Thunderbird does so): name the client on this session's login event."""
        call = functools.partial(self.shared.store.auth.name_client, self.user.email, protocol="imap", ip=self.ip or None,
                                 client=self.client_id, since=self.login_time)
        try:
            await self.run(call)
        except Exception as exc:  # noqa: BLE001 - the log entry is not worth failing ID for
            self.shared.log.warning("naming the client of %s's login: %s", self.user.email, exc)

    async def c_id(self: Any, tag: str, args: Args) -> None:
        params = args.next("ID parameters")
        args.end()
        if isinstance(params, list):
            if len(params) % 2 or len(params) > 60:
                raise ParseError("ID needs field/value pairs")
            fields: dict[str, str] = {}
            for k in range(0, len(params), 2):
                key, value = params[k], params[k + 1]
                if not isinstance(key, bytes):
                    raise ParseError("ID field names are strings")
                if isinstance(value, str) and value.upper() == "NIL":
                    continue
                if not isinstance(value, bytes):
                    raise ParseError("ID values are strings or NIL")
                fields[key.decode("utf-8", "replace").lower()[:30]] = value.decode("utf-8", "replace")[:100]
            if self.client_id is None and fields.get("name"):
                text = fields["name"] + (" " + fields["version"] if fields.get("version") else "")
                self.client_id = "".join(ch for ch in text if ch.isprintable())[:100]
                if self.user is not None and self.client_id:
                    await self._name_client_late()
        elif not (isinstance(params, str) and params.upper() == "NIL"):
            raise ParseError("ID takes a list or NIL")
        self.send(b'* ID ("name" "Mail Appliance" "vendor" "mail-appliance")\r\n')
        self.tagged(tag, b"OK ID completed")
