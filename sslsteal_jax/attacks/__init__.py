"""How a surrogate is fed: query collection and caching, strategies (head recreation,
augmented queries, label baselines) and adaptive attacks against active defenses.
Surrogate training itself lives in ``sslsteal_jax.trainers``."""
