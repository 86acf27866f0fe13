"""Putting the appliance on a host and keeping it right.

``survey`` reads the host, ``checks`` holds the output sinks and the preflight
checks, ``sizing`` derives the settings, ``provision`` and ``install`` run the
steps of ``appliance install``, ``units`` renders the systemd units,
``dnsrecords`` and ``doctor`` say what to publish and whether all is well,
``fingerprint``, ``licence`` and ``vendor_key`` bind a licence to the host,
``upgrade`` migrates the database with a backup.
"""
