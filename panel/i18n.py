"""Per-request translation for the panel.

The catalogues are the ones of ``appliance.i18n`` (the panel registers its
own with ``add_translations`` in ``panel.i18n_zh``). The CLI chooses one
language per process; the panel serves many browsers at once, so the
language of a request lives in a context variable set by the middleware, and
``_()`` here reads it. The browser's Accept-Language chooses, a ``lang``
cookie (the switch in the page footer) overrides.
"""

from __future__ import annotations

import re
from contextvars import ContextVar

from appliance import i18n_store_zh  # noqa: F401 - the store's messages in Chinese
from appliance.i18n import CATALOGUES, SUPPORTED_LANGUAGES, add_translations, normalise_language

from .i18n_zh import ZH

add_translations("zh-CN", ZH)

LANG_COOKIE = "lang"
_lang: ContextVar[str] = ContextVar("panel_lang", default="en")


def _(s: str) -> str:
    """Translate the template ``s`` into the language of the current request."""
    catalogue = CATALOGUES.get(_lang.get())
    if not catalogue:
        return s
    return catalogue.get(s, s)


def current_language() -> str:
    return _lang.get()


def set_request_language(lang: str) -> None:
    _lang.set(lang if lang in SUPPORTED_LANGUAGES else "en")


def choose_language(cookie: str | None, accept_language: str | None) -> str:
    """The cookie if valid, else the best Accept-Language match (q-values honoured), else English."""
    lang = normalise_language(cookie) if cookie else None
    if lang:
        return lang
    best: tuple[float, int, str] | None = None
    for i, part in enumerate((accept_language or "")[:500].split(",")):
        tag, _sep, params = part.strip().partition(";")
        q = 1.0
        m = re.search(r"q=([0-9.]+)", params)
        if m:
            try:
                q = float(m.group(1))
            except ValueError:
                q = 0.0
        norm = normalise_language(tag.strip())
        if norm and q > 0 and (best is None or (q, -i) > (best[0], best[1])):
            best = (q, -i, norm)
    return best[2] if best else "en"


def translate_error(exc: BaseException | str) -> str:
    """An error's message in the request's language.

    Store errors keep their English template and values apart (``template``,
    ``params``): the template is translated, then filled in. Anything else is
    shown as it is.
    """
    template = getattr(exc, "template", None)
    params = getattr(exc, "params", None)
    if template and isinstance(params, dict):
        try:
            return _(template).format(**params)
        except (KeyError, IndexError, ValueError):
            pass
    return str(exc)
