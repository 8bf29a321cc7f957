"""Datasets: offline tfds builders, the registry (any other name goes to tensorflow-datasets),
fixed disjoint experiment splits and SimCLR augmentations in JAX."""
