"""Query-budget scan against the shipped Fashion-MNIST victim (docs/science.md claims 1-4).

Usage:
  python -m sslsteal_jax.main --config=configs/budget_scan.py --workdir=runs/budget_scan
  python -m sslsteal_jax.main --config=configs/budget_scan.py:losses=infonce,protocol=epochs --config.budgets=250,1000,5000 --config.seeds=0,1 --workdir=DIR

Experiment ``budget_scan`` (sslsteal_jax/experiments/budget_scan.py): one
surrogate per (query source, loss, budget, seed) cell, trained as in the main job
(this config is ``configs/quickstart.py``'s, per-loss settings included, plus the
scan fields); resumable cell by cell. Fields beyond the arguments:
``budgets`` and ``seeds`` (tuples of integers: ``--config.budgets=250,1000,5000``),
``query_sources`` (comma list: ``fashion_mnist`` = the 5,000-image test pool,
disjoint from everything the victim saw, budgets <= 5,000;
``fashion_mnist:train`` = the victim's own 60,000 training images;
``mnist_subset`` (5,000) and ``digits`` (1,797) = out-of-distribution queries),
``stack_memory_fraction``, ``stack_mode`` (auto | vmap | unroll), ``stream``
(``enabled=True``: pools and probe sets read lazily a batch at a time, answers in the
chunked on-disk cache, ``configs.base.stream_block``; the same results).

Stacking (``stack``): cells with equal shapes and schedules train as up to
``stack`` members of one compiled program (jax.vmap on accelerators, the member
steps unrolled into one program on CPU); fewer when K x the estimated bytes per
member exceed ``stack_memory_fraction`` x the available memory; 1 = one cell
after another. Measured on this project's 2-core CPU, idle, each setting in a
fresh process: 4 budgets (256-2,048) x infonce, protocol=examples, 10,240
examples per cell (40 steps of batch 256), probes on 2,000 labelled images:
stack=1 trained the 4 cells in 77.5 s (scan wall 146 s), stack=4 (one unrolled
program) in 58.1 s (0.75x; scan wall 122 s, 0.83x), with identical probe
accuracies and fidelities equal to 1e-6. Re-measured with the default of one
XLA device per core (2 here), same cells: stack=4 trains them in 55.6 s,
stack=1 in 64.3 s (one device, stack=4: 58.9 s).
"""
from __future__ import annotations

import ml_collections

from sslsteal_jax.configs import args, base, quickstart
from sslsteal_jax.configs.args import Arg
from sslsteal_jax.errors import ConfigError

EXPERIMENT = "budget_scan"

ARGS = {
    "losses": base.losses_arg("all"),
    "protocol": Arg("examples", "examples: equal training examples per cell (equal attacker "
                    "compute) | epochs: the same epochs over every budget (the paper's)",
                    choices=("examples", "epochs")),
    "examples": Arg(60000, "training examples each surrogate sees under protocol=examples",
                    minimum=1),
    "epochs": Arg(30, "surrogate epochs over each budget under protocol=epochs", minimum=1),
    "probe_train_size": Arg(20000, "labelled train images for the probes (none = all 60,000)",
                            minimum=1, optional=True),
    "seed": base.SEED_ARG,
    "stack": Arg(8, "most cells trained in one compiled program (1 = one after another)",
                 minimum=1),
    "batch_size": Arg(None, "one surrogate batch size for every loss (none = each loss's own); "
                      "with protocol=examples every cell then takes the same optimizer steps",
                      kind=int, minimum=1, optional=True),
    "lr_grid": Arg((), "learning rates tried per loss on a validation split before the scan; "
                   "each loss then trains with its best (empty = each loss's own)",
                   kind=float, minimum=1e-12),
    "select_budget": Arg(None, "queries of the learning-rate selection cells (none = the "
                         "largest budget)", kind=int, minimum=1, optional=True),
}


def build(a) -> ml_collections.ConfigDict:
    """The scan's ConfigDict from typed arguments ``a`` (:data:`ARGS`): the main job's
    (:func:`quickstart.build`) plus the scan fields."""
    c = quickstart.build(args.defaults(quickstart.ARGS, seed=a.seed, epochs=a.epochs))
    c.experiment = EXPERIMENT
    c.budgets = (250, 1000, 2500, 5000, 10000, 20000)
    c.query_sources = "fashion_mnist:train"
    c.seeds = (0,)
    c.losses = base.join(a.losses)
    # "examples": every cell sees examples_per_cell training examples (equal attacker
    # compute); "epochs": steal.epochs epochs over every budget (the paper's protocol).
    c.protocol = a.protocol
    c.examples_per_cell = a.examples
    # Probes on the first 20,000 labelled train images keep each cell's evaluation short;
    # victim and independent reference rows use the same probe data.
    c.probe_train_size = a.probe_train_size
    c.stack = a.stack
    c.stack_memory_fraction = 0.5
    c.stack_mode = "auto"  # "auto" | "vmap" | "unroll" (training.vmap.MODES)
    c.steal.batch_size = a.batch_size  # None = each loss's own (loss_overrides, registry)
    # Learning-rate selection (docs/results/claim2_protocols.md): each loss x lr in lr_grid
    # trains one cell (first source, first seed, select_budget queries), probed on the
    # last validation_size labelled probe-train images after a probe fitted on the rest
    # (never the probe test set); the best lr is the loss's learning rate for the scan.
    c.lr_grid = tuple(float(v) for v in a.lr_grid)
    c.select_budget = ml_collections.config_dict.placeholder(int)
    c.select_budget = a.select_budget
    c.validation_size = 5000
    c.victim.train_if_missing = False
    del c["budget"]
    return c


get_config = args.config_getter(build, ARGS, "The budget scan's config")


def validate(cfg) -> None:
    """Check the scan's lists, protocol, stacking options, surrogate settings and query
    sources (no data loaded).

    Raises:
      ConfigError: the first bad field.
    """
    from sslsteal_jax.training.vmap import MODES

    base.check_stream(cfg.stream, ("direct",))
    base.check_int_tuple("budgets", cfg.budgets, minimum=1, example="250,1000,5000")
    base.check_int_tuple("seeds", cfg.seeds, minimum=0, example="0,1,2")
    base.check_losses("losses", cfg.losses)
    base.check_choice("protocol", cfg.protocol, ("examples", "epochs"))
    base.check_int("examples_per_cell", cfg.examples_per_cell)
    base.check_int("stack", cfg.stack)
    base.check_number("stack_memory_fraction", cfg.stack_memory_fraction, upper=1.0)
    if cfg.stack_mode not in MODES:
        raise ConfigError(f"stack_mode={cfg.stack_mode!r}; allowed: {list(MODES)}")
    base.check_api_output(cfg.api_output)
    base.check_steal("", cfg.steal)
    base.check_eval(cfg.eval)
    base.check_int("probe_test_size", cfg.probe_test_size)
    base.check_int("probe_train_size", cfg.probe_train_size, optional=True)
    check_lr_selection(cfg)
    base.check_dataset("dataset", cfg.dataset)
    for source in (s.strip() for s in (cfg.query_sources or "").split(",") if s.strip()):
        base.check_dataset("query_sources", source)


def check_lr_selection(cfg) -> None:
    """The learning-rate selection fields: ``lr_grid`` (a tuple of positive numbers,
    empty = off), ``select_budget`` (None or an int >= 1, at most the largest budget),
    ``validation_size`` (int >= 1, smaller than the probe-train set) and, with a grid,
    no ``steal.learning_rate`` (one explicit rate for every loss leaves nothing to select).

    Raises:
      ConfigError: the first bad field, naming its value and what is allowed.
    """
    grid = cfg.get("lr_grid", ())
    if not isinstance(grid, (tuple, list)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in grid):
        base.fail("lr_grid", grid, "positive learning rates, e.g. --config.lr_grid=3e-4,1e-3,3e-3")
    if not grid:
        return
    if cfg.steal.get("learning_rate") is not None:
        raise ConfigError(f"steal.learning_rate={cfg.steal.learning_rate!r} with lr_grid="
                          f"{tuple(grid)}; allowed: leave steal.learning_rate unset (the grid "
                          "selects each loss's learning rate)")
    base.check_int("select_budget", cfg.get("select_budget"), optional=True)
    if cfg.get("select_budget") is not None and cfg.select_budget > max(cfg.budgets):
        raise ConfigError(f"select_budget={cfg.select_budget} exceeds the largest budget "
                          f"{max(cfg.budgets)}; allowed: at most the answers the scan buys")
    base.check_int("validation_size", cfg.get("validation_size"))
    n = cfg.probe_train_size
    if n is not None and cfg.validation_size >= n:
        raise ConfigError(f"validation_size={cfg.validation_size} must be smaller than "
                          f"probe_train_size={n} (the probe is fitted on the rest)")
