"""THREAD=REFERENCES reads the parent chain from the search summaries, and still threads older mail.

Mail delivered before the summaries carried ``references`` / ``in_reply_to``
has summaries without them: THREAD falls back to the structure record for
those messages only. A mailbox mixing both kinds must thread exactly like one
of either kind.
"""

from __future__ import annotations

import json

from imapkit import account, imap, new_box, ok, store_of
from sqlalchemy import select, update
from test_imap_sort_thread import REFERENCES, THREAD_CORPUS, fill, thread

from storage import models as m
from storage.ingest import MAX_REF_CHARS, MAX_REFS, summarise, thread_links
from storage.mime import scan


def _make_old_style(inst, email: str, box: str, seqs: set[int]) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the summaries of messages ``seqs`` as they were written before the chain was kept."""
    store = store_of(inst)
    user = store.directory.get_user(email)
    mb = store.mail.get_mailbox(user.id, box)
    with store.read() as c:
        rows = c.execute(
            select(m.messages.c.uid, m.blobs.c.blob_id, m.blobs.c.summary)
            .join(m.blobs, m.blobs.c.blob_id == m.messages.c.blob_id)
            .where(m.messages.c.mailbox_id == mb.id).order_by(m.messages.c.uid)
        ).all()
    assert len(rows) == len(THREAD_CORPUS)
    with store.write() as c:
        for seq, r in enumerate(rows, 1):
            if seq not in seqs:
                continue
            context = b"summary|" + r.blob_id.encode()
            summ = json.loads(store.keyring.open(user.uuid, bytes(r.summary), context))
            assert "references" in summ and "in_reply_to" in summ  # written by this version
            del summ["references"], summ["in_reply_to"]
            sealed = store.keyring.seal(user.uuid, json.dumps(summ).encode(), context)
            c.execute(update(m.blobs).where(m.blobs.c.blob_id == r.blob_id).values(summary=sealed))
    got = store.mail.summaries(user, mb.id)  # this process never read them before: no stale cache
    old = {seq for seq, uid in enumerate(sorted(got), 1) if "references" not in got[uid]}
    assert old == seqs


def test_mixed_old_and_new_summaries_thread_correctly(server) -> None:
    inst = server.inst
    email = account(inst, "thread-mixed")
    c = imap(inst, email)
    try:
        box = new_box(c, "thread-mixed")
        fill(c, box, [("01-Jan-2024 14:00:00 +0000", msg) for msg in THREAD_CORPUS])
    finally:
        c.logout()
    # old style: b (In-Reply-To), d, f, h, a-dup, m (In-Reply-To with a comment), q (the loop);
    # new style: a, c (folded References), e, g, Meeting, k (a missing parent), p
    _make_old_style(inst, email, box, {2, 4, 6, 8, 10, 12, 14})
    c = imap(inst, email)  # a new session: nothing about this mailbox is cached by the server yet
    try:
        ok(c.select(box, readonly=True))
        assert thread(c, "REFERENCES") == REFERENCES
        assert ok(c.uid("THREAD", "REFERENCES", "UTF-8", "ALL"))[0] == b"(2 3 (5)(4)(12 13))((6)(7))(8 9)((10)(11))(15 14)"
        assert thread(c, "REFERENCES", "NOT", "2") == b"(1 (4)(3)(11 12))((5)(6))(7 8)((9)(10))(14 13)"
        assert thread(c, "REFERENCES") == REFERENCES  # again, from what the first THREAD kept
    finally:
        c.logout()


def _summary(*headers: str) -> dict:
    return summarise(scan(("\r\n".join(("Subject: x", *headers)) + "\r\n\r\nbody\r\n").encode()))


def test_summary_keeps_a_bounded_parent_chain() -> None:
    s = _summary("In-Reply-To: <p@t> (comment) <q@t>", "References: <a@t>\r\n <b@t> junk <p@t>")
    assert s["references"] == ["a@t", "b@t", "p@t"] and s["in_reply_to"] == "p@t"
    s = _summary("Message-ID: <z@t>")
    assert s["references"] == [] and s["in_reply_to"] is None
    many = " ".join(f"<m{i}@t>" for i in range(250))
    s = _summary("References: " + many)
    assert s["references"] == [f"m{i}@t" for i in range(250 - MAX_REFS, 250)]
    # too long to keep: left out of the summary, so THREAD reads the structure record as for older mail
    long_id = "<" + "x" * (MAX_REF_CHARS + 1) + "@t>"
    assert "references" not in _summary("References: <a@t> " + long_id)
    assert "references" not in _summary("In-Reply-To: " + long_id)
    assert thread_links({"references": " ".join(f"<{'y' * 200}{i}@t>" for i in range(60))}, {}) == {}
