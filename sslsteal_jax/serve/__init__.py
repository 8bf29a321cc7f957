"""The representation API as an HTTP service (optional extra: ``pip install -e '.[serve]'``).

``python -m sslsteal_jax.serve --victim=CKPT_DIR --db=ledger.sqlite --port=8000``
serves a victim; ``python -m sslsteal_jax.serve.admin`` manages its API keys.
Modules: ``ledger`` (SQLite: hashed keys, budgets, idempotent charges, per-key
defense state), ``batcher`` (dynamic batching of concurrent requests),
``service`` (one request's checks, charge, forward, defenses, refund),
``metrics`` (Prometheus), ``app`` (FastAPI routes), ``admin`` (key CLI).
The client is ``sslsteal_jax.api.remote.RemoteVictimAPI``; docs/serving.md
has the wire format, keys, ledger, limits and error codes.

Importing this package loads nothing (no JAX, no web framework).
"""
