"""The contract between the service runner and the protocol packages.

A service module (``mta.service``, ``imapd.service``, ``panel.service``,
``antispam.service``) exposes ``async def start(ctx: ServiceContext) ->
Service | None``; it returns None when the config gives it nothing to do.
``appliance up`` starts every service on one asyncio loop (Twisted runs on
the same loop through the asyncio reactor); the systemd units start one each
with ``appliance up --service NAME``. Both paths run this same code.
"""

from __future__ import annotations

import logging
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

SERVICE_MODULES: dict[str, str] = {
    "antispam": "antispam.service",
    "mta": "mta.service",
    "imapd": "imapd.service",
    "panel": "panel.service",
}


class Service(Protocol):
    name: str
    #: human-readable endpoints, e.g. ["smtp 127.0.0.1:2525"]
    endpoints: list[str]

    async def stop(self) -> None:
        """Stop accepting, finish what is in flight, release resources."""


@dataclass
class ServiceContext:
    cfg: Any  # appliance.config.Config
    store: Any  # storage.store.Store
    executor: ThreadPoolExecutor
    ssl_context: ssl.SSLContext | None
    log: logging.Logger
    #: services started so far, by name: lets one service find another (the
    #: MTA finds the antispam client, the panel the queue)
    running: dict[str, Any] = field(default_factory=dict)
