"""The sentiment tests use the shared `tiny_base_dir` and `make_planted_reviews` fixtures
(tests/conftest.py)."""
