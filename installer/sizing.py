"""Sizing: what a host needs for N mailboxes, and the settings the installer writes.

The rules (also in docs/install.md):

- disk: at least 1 GiB + 100 MiB per mailbox free to install; 5 GiB + 1 GiB
  per mailbox recommended (mail grows);
- memory: at least 1 GiB + 2 MiB per mailbox (rspamd and redis take about
  half a gigabyte); 2 GiB + 8 MiB per mailbox recommended;
- ``tuning.workers``: 4 threads per CPU core (at least 4, at most 64), fewer
  when their Argon2 hashing (64 MiB each) would take more than a quarter of
  the memory;
- ``tuning.db_cache_size``: 1% of the memory per connection, 16 MiB to 256 MiB;
- the database: SQLite up to SQLITE_MAX_MAILBOXES mailboxes (one file, no
  server; measured ~1,000 write transactions/s per writer in WAL mode),
  PostgreSQL above (many writers, several front ends).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

from appliance.i18n import _
from appliance.output import human_size

from .survey import Survey

K, M, G = 1024, 1024**2, 1024**3
SQLITE_MAX_MAILBOXES = 500
ARGON2_MEMORY = 64 * M


def disk_needed(mailboxes: int) -> int:
    return 1 * G + 100 * M * mailboxes


def disk_recommended(mailboxes: int) -> int:
    return 5 * G + 1 * G * mailboxes


def memory_needed(mailboxes: int) -> int:
    return 1 * G + 2 * M * mailboxes


def memory_recommended(mailboxes: int) -> int:
    return 2 * G + 8 * M * mailboxes


@dataclass
class Sizing:
    workers: int
    db_cache_size: int
    database: str  # "sqlite" or "postgresql"
    reasons: dict[str, str] = field(default_factory=dict)  # "section.key" -> why, for comments in appliance.toml

    def overrides(self) -> dict[str, Any]:
        return {"tuning.workers": self.workers, "tuning.db_cache_size": f"{self.db_cache_size // M}M"}

    def describe(self) -> list[str]:
        return [_("{workers} worker threads per service, {cache} database cache per connection, {db}").format(
            workers=self.workers, cache=human_size(self.db_cache_size), db="PostgreSQL" if self.database == "postgresql" else "SQLite")]


def plan(survey: Survey, mailboxes: int, database_url: str = "") -> Sizing:
    cores, mem = max(1, survey.cpu.threads), survey.memory.total
    by_cpu = min(64, max(4, cores * 4))
    by_memory = max(2, int(mem * 0.25 // ARGON2_MEMORY))
    workers = min(by_cpu, by_memory)
    why_workers = _("{cores} CPU threads x 4 = {n} workers").format(cores=cores, n=cores * 4)
    if by_cpu != cores * 4:
        why_workers += _(", kept within 4 to 64")
    if by_memory < by_cpu:
        why_workers += _("; lowered to {n} so their Argon2 hashing (64 MiB each) stays within a quarter of the {mem} of memory").format(
            n=workers, mem=human_size(mem))
    else:
        why_workers += _("; their Argon2 hashing (64 MiB each) fits in a quarter of the {mem} of memory").format(mem=human_size(mem))
    cache = min(256 * M, max(16 * M, (mem // 100) // M * M))
    why_cache = _("1% of the {mem} of memory, kept within 16M to 256M").format(mem=human_size(mem))
    postgres = database_url.startswith("postgresql")
    if postgres:
        why_db = _("PostgreSQL as given to the installer (--database-url), for {n} mailboxes").format(n=mailboxes)
    elif mailboxes > SQLITE_MAX_MAILBOXES:
        why_db = _("SQLite, but {n} mailboxes is above the {max} SQLite is sized for: move to PostgreSQL "
                   "(appliance install --database-url postgresql://...)").format(n=mailboxes, max=SQLITE_MAX_MAILBOXES)
    else:
        why_db = _("SQLite: {n} mailboxes is within the {max} it is sized for; above that use PostgreSQL").format(
            n=mailboxes, max=SQLITE_MAX_MAILBOXES)
    reasons = {"tuning.workers": why_workers, "tuning.db_cache_size": why_cache, "storage.database_url": why_db}
    return Sizing(workers, cache, "postgresql" if postgres else "sqlite", reasons)


def annotate(text: str, notes: dict[str, str]) -> str:
    """Insert ``# installer: why`` comment lines above the keys named in ``notes`` ("section.key")."""
    lines, out, section = text.splitlines(), [], ""
    for line in lines:
        m = re.match(r"\[([A-Za-z0-9_.-]+)\]\s*$", line)
        if m:
            section = m.group(1)
        k = re.match(r"([A-Za-z0-9_]+)\s*=", line)
        if k and f"{section}.{k.group(1)}" in notes:
            out += textwrap.wrap(_("installer: {why}").format(why=notes[f"{section}.{k.group(1)}"]), 78,
                                 initial_indent="# ", subsequent_indent="#   ", break_on_hyphens=False, break_long_words=False)
        out.append(line)
    return "\n".join(out) + "\n"
