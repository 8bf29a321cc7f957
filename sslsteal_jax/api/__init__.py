"""The victim service: a representation API with per-user accounts and budgets."""
from sslsteal_jax.api.victim_api import BudgetExceededError, QueryValidationError, VictimAPI

__all__ = ["VictimAPI", "BudgetExceededError", "QueryValidationError"]
