"""``appliance dkim show|rotate DOMAIN``: a domain's DKIM keys and their rotation (mta/dkimsign.py).

rotate is three steps, each one run of the command:

1. new keys (Ed25519 + RSA-2048, the next selector) are made *pending*; the
   command prints their DNS records; mail is still signed with the old keys;
2. once the records are published (the command looks them up with the
   configured resolver; ``--force`` skips that), signing switches to the new
   keys; the old ones stay published;
3. ``rotate --finish``, after ``dkim.keep_old`` (``--force`` to finish
   sooner), retires the old keys; their records may then be removed.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .cli import CliError, actor, load, open_store
from .i18n import _
from .output import print_json, when


def register(sub: argparse._SubParsersAction) -> None:
    import mta.i18n_zh  # noqa: F401 - Chinese messages

    d = sub.add_parser("dkim", help=_("DKIM keys of a domain: show them, rotate them"))
    ds = d.add_subparsers(dest="dkim_cmd", metavar="ACTION")
    ds.required = True
    p = ds.add_parser("show", help=_("the domain's DKIM keys, which one signs, and their DNS records"))
    p.add_argument("domain")
    p.add_argument("--check", action="store_true", help=_("also look the records up in DNS"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    p = ds.add_parser("rotate", help=_("replace the domain's DKIM keys, one step per run (new keys, switch, --finish)"))
    p.add_argument("domain")
    p.add_argument("--finish", action="store_true", help=_("retire the previous keys (after dkim.keep_old)"))
    p.add_argument("--force", action="store_true", help=_("switch without seeing the records in DNS, or finish before dkim.keep_old"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rotate)


def zone_line(name: str, txt: str) -> str:
    chunks = " ".join(f'"{txt[i:i + 255]}"' for i in range(0, len(txt), 255))
    return f"{name}. 3600 IN TXT {chunks}"


def _domain(args: argparse.Namespace) -> tuple[Any, str]:
    from storage.addresses import normalise_domain

    cfg = load(args)
    domain = normalise_domain(args.domain)
    store = open_store(args)
    try:
        if not store.directory.is_local_domain(domain):
            raise CliError(_("{domain} is not a domain of this appliance").format(domain=domain), 67)
    finally:
        store.close()
    return cfg, domain


def _lookup(cfg: Any) -> Any:
    from installer.dnsrecords import make_lookup

    return make_lookup(cfg.dns.resolvers, port=cfg.dns.port, timeout=float(cfg.dns.timeout))


def published(lookup: Any, key: dict[str, Any]) -> bool | None:
    """Is the key's record in DNS? None when the resolver failed."""
    found = lookup(key["name"], "TXT")
    if found is None:
        return None
    want = "".join(key["txt"].split())
    return any("".join(f.split()) == want for f in found)


def cmd_show(args: argparse.Namespace) -> int:
    from mta.dkimsign import describe

    cfg, domain = _domain(args)
    info = describe(cfg.storage.keys_dir, domain)
    if args.check:
        lookup = _lookup(cfg)
        for k in info["keys"]:
            k["published"] = published(lookup, k)
    if args.json:
        print_json(info)
        return 0
    if not info["keys"]:
        print(_("{domain} has no DKIM key: mail from it is not signed; create one with `appliance dkim rotate {domain}`")
              .format(domain=domain))
        return 0
    states = {"active": _("signing"), "pending": _("new, waiting for its DNS record"),
              "previous": _("retiring, keep it published"), "unused": _("not used")}
    for k in info["keys"]:
        line = _("selector {selector} ({algorithm}): {state}").format(selector=k["selector"], algorithm=k["algorithm"],
                                                                      state=states.get(k["state"], k["state"]))
        if "published" in k:
            line += "  " + {True: _("[in DNS]"), False: _("[NOT in DNS]"), None: _("[DNS lookup failed]")}[k["published"]]
        print(line)
        print("  " + zone_line(k["name"], k["txt"]))
    if info["previous"] and info["switched"]:
        until = info["switched"] + float(cfg.dkim.keep_old)
        print(_("rotation in progress: keep the {old} records published until {date}, then run `appliance dkim rotate {domain} --finish`")
              .format(old=info["previous"], date=when(until), domain=domain))
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from mta import dkimsign

    cfg, domain = _domain(args)
    keys_dir = cfg.storage.keys_dir
    state = dkimsign.rotation_state(keys_dir, domain)
    info = dkimsign.describe(keys_dir, domain)
    out: dict[str, Any] = {"domain": domain}
    lines: list[str] = []
    if args.finish:
        if not state["previous"]:
            raise CliError(_("{domain} has no previous DKIM key to retire").format(domain=domain), 65)
        until = (state["switched"] or 0) + float(cfg.dkim.keep_old)
        if time.time() < until and not args.force:
            raise CliError(_("mail signed with {old} may still be in transit: keep its records published until {date} (dkim.keep_old), or use --force")
                           .format(old=state["previous"], date=when(until)), 75)
        old = [k for k in info["keys"] if k["generation"] == state["previous"]]
        dkimsign.retire_previous(keys_dir, domain)
        out.update(step="finished", retired=[k["selector"] for k in old])
        lines.append(_("{old} retired; these DNS records may be removed now:").format(old=state["previous"]))
        lines += ["  " + zone_line(k["name"], k["txt"]) for k in old]
    elif state["pending"]:
        pending = [k for k in info["keys"] if k["generation"] == state["pending"]]
        if not args.force:
            lookup = _lookup(cfg)
            missing = [k for k in pending if published(lookup, k) is not True]
            if missing:
                records = "; ".join(zone_line(k["name"], k["txt"])[:80] + "..." for k in missing)
                raise CliError(_("the new DKIM records are not in DNS yet (publish them, or use --force): {records}")
                               .format(records=records), 75)
        new = dkimsign.switch_to_pending(keys_dir, domain)
        out.update(step="switched", active=new["active"], previous=new["previous"])
        lines.append(_("{domain} is now signed with {new}.").format(domain=domain, new=new["active"]))
        if new["previous"]:
            until = new["switched"] + float(cfg.dkim.keep_old)
            lines.append(_("Keep the {old} records published until {date}, then run `appliance dkim rotate {domain} --finish`.")
                         .format(old=new["previous"], date=when(until), domain=domain))
    else:
        if state["previous"]:
            raise CliError(_("finish the rotation in progress first: appliance dkim rotate {domain} --finish")
                           .format(domain=domain), 65)
        gen = dkimsign.start_rotation(keys_dir, domain)
        new_keys = [k for k in dkimsign.describe(keys_dir, domain)["keys"] if k["generation"] == gen]
        out.update(step="started", pending=gen, records=[{"name": k["name"], "type": "TXT", "value": k["txt"]} for k in new_keys])
        lines.append(_("New DKIM keys {new} for {domain}. Publish these DNS records:").format(new=gen, domain=domain))
        lines += ["  " + zone_line(k["name"], k["txt"]) for k in new_keys]
        if state["active"]:
            lines.append(_("Mail is still signed with {old} (keep its records published). Once the new records are visible, "
                           "run `appliance dkim rotate {domain}` again to switch.").format(old=state["active"], domain=domain))
        else:
            lines.append(_("Mail from {domain} is not signed until then: once the records are visible, "
                           "run `appliance dkim rotate {domain}` again.").format(domain=domain))
    store = open_store(args)
    try:
        store.events.admin(actor(), "dkim.rotate", domain, detail={k: v for k, v in out.items() if k != "records"})
    finally:
        store.close()
    if args.json:
        print_json(out)
    else:
        print("\n".join(lines))
    return 0
