"""sslsteal_jax: measure how easily a self-supervised encoder behind a
representation API can be stolen, and what each defense costs."""
from setuptools import find_packages, setup

setup(
    name="sslsteal_jax",
    version="0.1.0",
    description="JAX/Flax toolkit for model extraction of self-supervised encoders and defenses",
    packages=find_packages(include=["sslsteal_jax", "sslsteal_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax>=0.2",
        "orbax-checkpoint>=0.6",
        "tensorflow-datasets>=4.9.6",
        "array_record>=0.5",
        # streaming input (sslsteal_jax/data/stream.py): batches read on worker threads
        "grain>=0.2.18,<0.3",
        "numpy>=1.26",
        "absl-py",
        "ml-collections",
        "scikit-learn",
        "scipy",
        "matplotlib",
        "tqdm",
        "mlxtend",
        # TensorBoard event files without TensorFlow (sslsteal_jax/training/summaries.py)
        "tensorboardX>=2.6",
    ],
    extras_require={
        # the test extra: pytest-xdist (the suite runs its files on 2 workers), tensorboard's event reader (it checks the events the runs
        # write), the HTTP service's client/server (tests/test_serve.py) and torch +
        # safetensors, the oracles of tests/test_convert.py / tests/test_public_encoders.py
        # (CPU wheel: --extra-index-url https://download.pytorch.org/whl/cpu)
        "test": ["pytest>=7", "pytest-xdist>=3.5", "fastapi>=0.110", "uvicorn>=0.29", "httpx>=0.27",
                 "prometheus-client>=0.20", "torch==2.13.0", "safetensors",
                 "tensorboard>=2.15",
                 # JAX compresses each persistent-cache entry (the suite caches every compiled
                 # program) with zstandard when installed, else zlib: 0.05 s instead of 0.30 s
                 # for 40 of the suite's programs (8.3 MB), measured 2026-12-02
                 "zstandard"],
        # the HTTP service: python -m sslsteal_jax.serve (docs/serving.md)
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.20"],
        # reading PyTorch checkpoints (models/convert.py)
        "torch": ["torch==2.13.0", "safetensors"],
        "gpu": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],
        "tpu": ["jax[tpu]"],
        # CPU build: pip install -e '.[bench]' --extra-index-url https://download.pytorch.org/whl/cpu
        "bench": ["torch==2.13.0"],
    },
)
