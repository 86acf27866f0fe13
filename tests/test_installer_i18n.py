"""Every message of the installer, the licence and the doctor has its Simplified Chinese translation."""

from __future__ import annotations

import ast
import string
from pathlib import Path

from appliance import i18n

REPO = Path(__file__).resolve().parent.parent
MODULES = [*sorted((REPO / "installer").glob("*.py")), REPO / "appliance/cli_install.py", REPO / "appliance/licence_hook.py"]


def messages() -> set[str]:
    used = set()
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_" and node.args:
                if isinstance(node.args[0], ast.Constant):
                    used.add(node.args[0].value)
    return used


def test_every_message_is_translated_with_the_same_placeholders() -> None:
    import installer.i18n_zh  # noqa: F401

    catalogue = i18n.CATALOGUES["zh-CN"]
    used = messages()
    assert len(used) > 300
    assert sorted(used - set(catalogue)) == []
    fields = lambda s: sorted(f[1] for f in string.Formatter().parse(s) if f[1] is not None)  # noqa: E731
    assert [m for m in used if fields(m) != fields(catalogue[m])] == []
