"""Helpers shared by the MTA tests: users, mailboxes and clients."""

from __future__ import annotations

import secrets
import smtplib
from typing import Any

from smtpchat import client_tls_context


def new_user(store: Any, domain: str = "example.test", *, prefix: str = "u", **fields: Any) -> tuple[str, str]:
    """A fresh user (unique address) with a password; returns (email, password)."""
    email = f"{prefix}{secrets.token_hex(4)}@{domain}"
    password = secrets.token_urlsafe(12)
    store.create_user(email, password=password, **fields)
    return email, password


def inbox(store: Any, email: str, mailbox: str = "INBOX") -> list[bytes]:
    """Every message in a mailbox, decrypted, in UID order."""
    user = store.directory.get_user(email)
    mb = store.mail.get_mailbox(user.id, mailbox)
    return [store.mail.read(user, msg) for msg in store.mail.messages(mb.id)]


def inbox_message_ids(store: Any, email: str) -> list[str]:
    """The Message-ID of every message in the user's INBOX, from the index (nothing decrypted but summaries)."""
    user = store.directory.get_user(email)
    mb = store.mail.get_mailbox(user.id, "INBOX")
    return [s["message_id"] for s in store.mail.summaries(user, mb.id).values()]


def message(sender: str, to: str, subject: str = "hello", body: str = "Hello there.\r\n", *,
            extra: str = "") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@test.example>\r\n{extra}\r\n{body}"
    ).encode()


def mx_client(port: int, *, starttls: bool = False) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=15)
    if starttls:
        client.starttls(context=client_tls_context())
    return client


def submission_client(port: int, login: str, password: str, *, implicit: bool = False) -> smtplib.SMTP:
    if implicit:
        client: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.example", timeout=15,
                                               context=client_tls_context())
    else:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=15)
        client.starttls(context=client_tls_context())
    client.login(login, password)
    return client
