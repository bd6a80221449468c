"""The wire protocol's version, kept in one place; a test checks PROTOCOL.md agrees."""

PROTOCOL_VERSION = 1
"""The version this implementation speaks (and the newest it knows)."""

SUPPORTED_VERSIONS = (1,)
"""Every version the broker and SDK can negotiate in ``hello``."""
