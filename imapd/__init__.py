"""IMAP4rev1 and POP3 on Twisted, over the storage API.

The IMAP command layer is our own (Twisted's ``IMAP4Server`` has the bugs
listed in NOTES.md and none of the extensions), on a plain Twisted
``Protocol`` so transports, TLS (implicit and STARTTLS) and listeners stay
Twisted's:

==============  ==============================================================
service.py      ``start(ctx)``: listeners, the watcher, the idle sweeper, stop()
conn.py         a connection: output with back-pressure, STARTTLS, limits
imap.py         IMAP framing (lines, bounded literals), dispatch, IDLE
cmd_auth.py     STARTTLS, LOGIN, AUTHENTICATE (PLAIN, LOGIN; SASL-IR), ID
cmd_mailbox.py  SELECT/EXAMINE, CREATE, DELETE, RENAME, LIST/LSUB, STATUS,
                APPEND, QUOTA
cmd_message.py  FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE, CLOSE, UNSELECT
parser.py       tokens, arguments, sequence sets
fetch.py        FETCH items and body sections (partial, HEADER.FIELDS, BINARY)
structure.py    ENVELOPE and BODYSTRUCTURE from the structure cached at ingest
search.py       SEARCH keys evaluated cheapest first over the index
cmd_sort.py     SORT and THREAD (RFC 5256, RFC 5957), over SEARCH's matches
sortkeys.py     base subjects, address and display sort keys
threading_refs  ORDEREDSUBJECT and REFERENCES threading, thread-list output
selected.py     a session's view of its mailbox and the RFC 3501 7.4.1 rules
views.py        per-process snapshots that make SELECT cheap
msgcache.py     per-process caches of what never changes about a message
watcher.py      IDLE: in-process notifications plus one poller per process
login.py        the login path shared by IMAP and POP3
pop3.py         POP3 (RFC 1939, CAPA, STLS, UIDL, TOP, SASL PLAIN)
listing.py      LIST patterns and attributes
wire.py         strings, literals, dates, modified UTF-7
==============  ==============================================================

Blocking store work (Argon2, decryption, index reads and writes) runs in the
service's thread pool; the reactor parses, dispatches and writes.
"""
