"""The core types every layer shares, with nothing of Kiln's above them: what a kind is and the targets
it makes (kind.py), and what a publish route is (route.py). Kinds, backends, verifiers and routes
implement these; the pipeline drives them."""
