"""The vendor's licence-signing public key (Ed25519, raw 32 bytes, base64).

Only the public half lives in the source. The private half is kept by the
vendor, off this repository, and used with ``appliance licence issue
--signing-key``. Tests sign with their own key pair and point
``APPLIANCE_LICENCE_PUBKEY_FILE`` at its public half; nothing else sets it.
"""

VENDOR_PUBLIC_KEY = "YTDFgOlCck6sBvA97ZFcGd815e8jFpLEKqwqpA8cSb8="
