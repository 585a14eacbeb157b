"""Storage for the reference homeserver, on :class:`logcontext.db.DatabasePool`."""
