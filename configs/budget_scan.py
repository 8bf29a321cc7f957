"""Query-budget scan against the shipped Fashion-MNIST victim (docs/science.md claims 1-4).

Usage:
  python -m sslsteal_jax.main --config=configs/budget_scan.py --workdir=runs/budget_scan
Scalar arguments (``configs/budget_scan.py:losses=infonce,examples=30000``):
  losses     any stealing loss (mse infonce softnn wasserstein cosine barlow symmetrized
             supcon softce), '+'-separated list, all (the paper's four), extra, every
  protocol   examples (default: equal training examples per cell) | epochs (the paper's)
  examples   training examples each surrogate sees under protocol=examples
  epochs     surrogate epochs over each budget under protocol=epochs
  probe_train_size  labelled train images for the probes (None = all 60,000)
  stack      most cells trained in one compiled program (default 8; 1 = sequential)
Lists are overridden with flags (comma separated, quoted):
  --config.budgets=250,1000,5000  --config.seeds=0,1
  --config.query_sources=fashion_mnist:train,mnist_subset  --config.losses=mse,infonce
Stacking (``stack``), measured on this project's 2-core CPU, idle, each setting in
a fresh process: 4 budgets (256-2,048) x infonce, protocol=examples, 10,240
examples per cell (40 steps of batch 256), probes on 2,000 labelled images:
stack=1 trained the 4 cells in 77.5 s (scan wall 146 s), stack=4 (one unrolled
program) in 58.1 s (0.75x; scan wall 122 s, 0.83x), with identical probe
accuracies and fidelities equal to 1e-6. Re-measured with the default of one
XLA device per core (2 here), same cells: stack=4 trains them in 55.6 s,
stack=1 in 64.3 s (one device, stack=4: 58.9 s). On accelerators stacking
uses jax.vmap.
Query sources: ``fashion_mnist`` = the 5,000-image test pool (disjoint from
everything the victim saw; budgets <= 5,000); ``fashion_mnist:train`` = the
victim's own 60,000 training images (budgets up to 60,000); ``mnist_subset``
(5,000) and ``digits`` (1,797) = out-of-distribution queries.
"""
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_arg  # noqa: E402
import quickstart  # noqa: E402


def get_config(arg: str = ""):
    """The budget scan's ConfigDict: the main job's (``configs/quickstart.py``, per-loss
    settings included) plus the scan fields (arguments: module docstring).

    Raises:
      ValueError: unknown argument or bad value.
    """
    a = parse_arg(arg, ("losses", "examples", "protocol", "epochs", "probe_train_size", "seed",
                        "stack"))
    c = quickstart.get_config(f"seed={a.get('seed', 0)}")
    c.experiment = "budget_scan"
    c.budgets = "250,1000,2500,5000,10000,20000"
    c.query_sources = "fashion_mnist:train"
    c.seeds = "0"
    c.losses = a.get("losses", "all").replace("+", ",")
    # "examples": every cell sees examples_per_cell training examples (equal attacker
    # compute); "epochs": steal.epochs epochs over every budget (the paper's protocol).
    c.protocol = a.get("protocol", "examples")
    c.examples_per_cell = a.int("examples", 60000, minimum=1)
    c.steal.epochs = a.int("epochs", 30, minimum=1)
    # Probes on the first 20,000 labelled train images keep each cell's evaluation short;
    # victim and independent reference rows use the same probe data.
    c.probe_train_size = a.int("probe_train_size", 20000)
    # Vmapped scans (experiments/budget_scan.py, trainers/stacked.py): cells with equal
    # shapes and schedules (all budgets >= the batch size and all seeds of a loss under
    # "examples"; the seeds of a budget under "epochs") train as up to `stack` members
    # of one compiled program (jax.vmap on accelerators, the member steps unrolled into
    # one program on CPU); fewer when K x the estimated bytes per member exceed
    # stack_memory_fraction x the available memory (host RAM on CPU, free device
    # memory on GPU/TPU); 1 = one cell after another.
    stack = a.get("stack", "8")  # not an integer: left as given, the scan names it in its error
    c.stack = int(stack) if stack.strip().isdigit() else stack
    c.stack_memory_fraction = 0.5
    c.stack_mode = "auto"  # "auto" | "vmap" | "unroll"
    c.victim.train_if_missing = False
    del c["budget"]
    return c
