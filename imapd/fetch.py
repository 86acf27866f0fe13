"""FETCH: item parsing and response rendering.

Rendering runs in a worker thread, batch by batch. Index items (UID, FLAGS,
INTERNALDATE, RFC822.SIZE, MODSEQ) come from index rows; ENVELOPE and
BODYSTRUCTURE from the cached structure (rendered once per message and kept
in a bounded cache); only body sections open the encrypted file, and then
only the byte range the section needs (a partial ``BODY[]<o.n>`` reads just
those chunks).
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field

from .parser import ParseError, tokenize
from .structure import SectionError, body_structure, envelope, find_part
from .wire import flag_list, internal_date, literal

INDEX_ITEMS = {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"}
META_ITEMS = {"ENVELOPE", "BODYSTRUCTURE", "BODY"}
MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
_SECTION_RE = re.compile(r"^(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK|BINARY\.SIZE)\[(.*)\](?:<(\d+)\.(\d+)>)?$", re.S | re.I)
_PART_RE = re.compile(r"^(\d+(?:\.\d+)*)(?:\.(.*))?$", re.S)
_FIELD_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")


@dataclass(frozen=True)
class Section:
    kind: str  # BODY, BINARY, BINARY.SIZE
    peek: bool
    path: tuple[int, ...]
    spec: str  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None
    label: str = ""  # as named in the response: BODY[...]

    @property
    def sets_seen(self) -> bool:
        return not self.peek and self.kind != "BINARY.SIZE"


@dataclass
class FetchPlan:
    items: list[object] = field(default_factory=list)  # str or Section
    sets_seen: bool = False
    needs_meta: bool = False
    needs_blob: bool = False
    index_only: bool = True
    modseq: bool = False

    def add(self, item: object) -> None:
        if item in self.items:
            return
        self.items.append(item)
        if isinstance(item, Section):
            self.index_only = False
            self.needs_blob = True
            if item.sets_seen:
                self.sets_seen = True
            if item.path or item.spec or item.kind != "BODY":
                self.needs_meta = True
        elif item in META_ITEMS:
            self.index_only = False
            self.needs_meta = True
        elif item in ("RFC822", "RFC822.TEXT", "RFC822.HEADER"):
            self.index_only = False
            self.needs_blob = True
            if item != "RFC822.HEADER":
                self.sets_seen = True
            if item != "RFC822":
                self.needs_meta = True
        elif item == "MODSEQ":
            self.modseq = True
        elif item not in ("UID", "FLAGS"):
            self.index_only = False


def parse_section(atom: str) -> Section:
    m = _SECTION_RE.match(atom)
    if not m:
        raise ParseError(f"Invalid fetch attribute {atom[:40]}")
    kind, text = m.group(1).upper(), m.group(2)
    peek = kind.endswith(".PEEK")
    kind = kind.replace(".PEEK", "")
    partial = None
    if m.group(3) is not None:
        if kind == "BINARY.SIZE":
            raise ParseError("BINARY.SIZE takes no partial range")
        count = int(m.group(4))
        if count == 0 or len(m.group(3)) > 10 or len(m.group(4)) > 10:
            raise ParseError("Invalid partial range")
        partial = (int(m.group(3)), count)
    path: tuple[int, ...] = ()
    rest = text
    pm = _PART_RE.match(text)
    if pm:
        path = tuple(int(x) for x in pm.group(1).split("."))
        if any(x == 0 or x > 0xFFFFFFFF for x in path) or len(path) > 100:
            raise ParseError("Invalid part number")
        rest = pm.group(2) or ""
    head, _, tail = rest.partition(" ")
    spec = head.upper()
    fields: tuple[str, ...] = ()
    if spec in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        try:
            toks = tokenize([tail.encode("utf-8", "surrogateescape")])
        except ParseError:
            raise ParseError("Invalid header field list") from None
        if len(toks) != 1 or not isinstance(toks[0], list) or not toks[0]:
            raise ParseError("Invalid header field list")
        names = []
        for t in toks[0]:
            name = t.decode("utf-8", "replace") if isinstance(t, bytes) else t
            if not isinstance(name, str) or not _FIELD_RE.match(name):
                raise ParseError("Invalid header field name")
            names.append(name.upper())
        fields = tuple(names)
    elif tail:
        raise ParseError("Invalid section")
    if spec not in ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
        raise ParseError("Invalid section")
    if spec == "MIME" and not path:
        raise ParseError("MIME needs a part number")
    if kind != "BODY" and spec:
        raise ParseError("BINARY takes part numbers only")
    sec = ".".join(str(x) for x in path)
    if spec:
        sec = f"{sec}.{spec}" if sec else spec
    if fields:
        sec += " (" + " ".join(fields) + ")"
    label = f"{kind}[{sec}]" + (f"<{partial[0]}>" if partial else "")
    return Section(kind, peek, path, spec, fields, partial, label)


def parse_items(arg: object) -> FetchPlan:
    """The FETCH attribute argument: a macro, one item, or a list of items."""
    plan = FetchPlan()
    if isinstance(arg, str) and arg.upper() in MACROS:
        for item in MACROS[arg.upper()]:
            plan.add(item)
        return plan
    items = arg if isinstance(arg, list) else [arg]
    if not items:
        raise ParseError("Empty fetch attribute list")
    for it in items:
        if not isinstance(it, str):
            raise ParseError("Invalid fetch attribute")
        up = it.upper()
        if up in INDEX_ITEMS or up in META_ITEMS or up in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
            plan.add(up)
        elif "[" in it:
            plan.add(parse_section(it))
        else:
            raise ParseError(f"Invalid fetch attribute {it[:40]}")
    return plan


# ------------------------------------------------------------------ sections


def _header_fields(block: bytes, names: tuple[str, ...], negate: bool) -> bytes:
    wanted = {n.lower().encode() for n in names}
    out = bytearray()
    keep = False
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out += line
            continue
        name = line.split(b":", 1)[0].strip().lower()
        keep = (name in wanted) != negate if b":" in line else False
        if keep:
            out += line
    if out and not out.endswith(b"\n"):
        out += b"\r\n"
    return bytes(out) + b"\r\n"


def _decode_cte(data: bytes, enc: str) -> bytes:
    if enc in ("7bit", "8bit", "binary", ""):
        return data
    if enc == "base64":
        return binascii.a2b_base64(re.sub(rb"[^A-Za-z0-9+/=]", b"", data) + b"===")  # lenient
    if enc == "quoted-printable":
        return binascii.a2b_qp(data)
    raise SectionError("UNKNOWN-CTE")


def section_range(struct: dict, sec: Section) -> tuple[int, int]:
    """Byte range [start, end) in the message of a BODY section without header filtering."""
    if not sec.path:
        if sec.spec in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            return 0, struct["h"][1]
        if sec.spec == "TEXT":
            return struct["h"][1], struct["e"]
        return 0, struct["e"]
    node = find_part(struct, list(sec.path))
    if sec.spec == "MIME":
        return node["h"][0], node["h"][1]
    if sec.spec in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"):
        if "msg" not in node:
            raise SectionError("not a message part")
        inner = node["msg"]["part"]
        if sec.spec == "TEXT":
            return inner["h"][1], inner["e"]
        return inner["h"][0], inner["h"][1]
    return node["h"][1], node["e"]


def render_section(reader, struct: dict | None, size: int, sec: Section) -> bytes:  # type: ignore[no-untyped-def]
    """``BODY[...] {n}\\r\\n...`` for one message; ``reader`` is an open BlobReader.

    Raises SectionError("UNKNOWN-CTE") for BINARY of an unknown encoding; a
    part that does not exist is NIL.
    """
    label = sec.label.encode()
    try:
        if sec.kind == "BODY":
            if not sec.path and not sec.spec:
                start, end = 0, size
            else:
                assert struct is not None
                start, end = section_range(struct, sec)
            if sec.spec in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
                data = _header_fields(reader.read_range(start, end - start), sec.fields, sec.spec.endswith(".NOT"))
            elif sec.partial is not None:
                o, n = sec.partial
                data = reader.read_range(start + o, min(n, end - start - o)) if o < end - start else b""
                return label + b" " + literal(data)
            else:
                data = reader.read_range(start, end - start)
        else:
            if not sec.path:
                data = reader.read_range(0, size)
            else:
                assert struct is not None
                node = find_part(struct, list(sec.path))
                if "parts" in node:
                    raise SectionError("not a leaf part")
                data = _decode_cte(reader.read_range(node["h"][1], node["e"] - node["h"][1]), node.get("enc") or "7bit")
            if sec.kind == "BINARY.SIZE":
                return label + b" %d" % len(data)
    except SectionError as exc:
        if str(exc) == "UNKNOWN-CTE":
            raise
        return label + b" NIL"
    if sec.partial is not None:
        o, n = sec.partial
        data = data[o:o + n]
    if sec.kind == "BINARY" and b"\0" in data:
        return label + b" ~" + literal(data)
    return label + b" " + literal(data)


def flags_item(flags: frozenset[str] | set[str], recent: bool) -> bytes:
    if recent:
        return b"FLAGS " + flag_list([*flags, "\\Recent"])
    return b"FLAGS " + flag_list(flags)


def date_item(ts: float) -> bytes:
    return b"INTERNALDATE " + internal_date(ts)


__all__ = [
    "FetchPlan",
    "Section",
    "body_structure",
    "date_item",
    "envelope",
    "flags_item",
    "parse_items",
    "render_section",
]
