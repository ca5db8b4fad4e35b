"""The HTTP API: app factory, transaction boundary, middleware and errors."""
