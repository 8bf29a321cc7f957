"""sslsteal_jax: model extraction of self-supervised encoders behind a representation API.

Reimplements Dziedzic et al., "On the Difficulty of Defending Self-Supervised
Learning against Model Extraction" (ICML 2022) in JAX/Flax. Subpackages:
``data``, ``models``, ``losses``, ``api``, ``attacks``,
``evaluation``, ``training``, ``experiments``; entry point ``sslsteal_jax.main``.
"""

__version__ = "0.1.0"
