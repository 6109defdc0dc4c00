"""Sites: where Kiln publishes. The embedded local site runs real services on 127.0.0.1."""
