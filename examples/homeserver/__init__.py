"""Reference Matrix homeserver core built on logcontext."""
