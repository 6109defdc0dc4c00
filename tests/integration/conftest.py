"""Integration tests use the session-wide local site from tests/conftest.py."""
