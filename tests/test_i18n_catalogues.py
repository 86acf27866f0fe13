"""Every store error template has a Chinese translation with the same placeholders."""

from __future__ import annotations

import re
from pathlib import Path

import appliance.i18n_store_zh  # noqa: F401
from appliance.i18n import CATALOGUES

ROOT = Path(__file__).resolve().parent.parent
ERROR_CALL = re.compile(r'(?:StoreError|CryptoError|NotFoundError|ConflictError|QuotaExceededError|InvalidInputError)\("((?:[^"\\]|\\.)*)"')
# internal invariants a person never sees
INTERNAL = re.compile(r"blob|chunk_size|writer is|hmac_key|offset=|row vanished|session stage|web panel key|token|master key must|data key|sealed record|message \{blob_id\}")


def test_store_errors_are_translated():  # type: ignore[no-untyped-def]
    zh = CATALOGUES["zh-CN"]
    missing = []
    for path in (ROOT / "storage").glob("*.py"):
        for template in ERROR_CALL.findall(path.read_text()):
            if INTERNAL.search(template):
                continue
            if template not in zh:
                missing.append(f"{path.name}: {template}")
            elif set(re.findall(r"\{(\w+)", template)) != set(re.findall(r"\{(\w+)", zh[template])):
                missing.append(f"{path.name}: placeholders differ: {template}")
    assert missing == []
