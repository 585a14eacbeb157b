"""Sub-commands of ``python -m homeserver``."""
