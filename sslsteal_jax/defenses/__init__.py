"""Defenses against encoder extraction: pure JAX functions
``(reps, state, key, params) -> (reps, state)`` composed by ``DefenseChain``.

Modules: ``perturb`` (Gaussian / Laplace noise, rounding, top-k, quantisation),
``similarity`` (query-similarity detection with a bounded per-user history),
``b4b`` (LSH coverage-dependent noise, Dubinski et al. NeurIPS 2023),
``transforms`` (per-user secret transforms), ``chain`` (registry, spec parsing).
"""
from sslsteal_jax.defenses.chain import DEFENSES, DefenseChain, format_spec, parse_spec, user_key

__all__ = ["DEFENSES", "DefenseChain", "format_spec", "parse_spec", "user_key"]
