"""Configs as a package (``sslsteal_jax.configs``): the typed argument parser, the thin
``configs/*.py`` files, configs derived from a base, and ``validate`` (the checks that
need no data). No JAX computation: these tests take seconds."""
import ast
import os

import ml_collections
import pytest

from sslsteal_jax import configs, losses
from sslsteal_jax.configs import args, base, load_config, validate
from sslsteal_jax.configs.args import Arg
from sslsteal_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")

DECLARED_ARGS = {"n": Arg(3, "an int", minimum=1), "x": Arg(0.5, "a float"), "on": Arg(True, "a bool"),
        "name": Arg("a", "text", choices=("a", "b")), "items": Arg((1, 2), "ints", minimum=0),
        "words": Arg(("w",), "names"), "size": Arg(None, "optional", kind=int, optional=True)}


def test_parse_types_come_from_the_defaults():
    a = args.parse("n=7,x=2,on=0,name=b,items=4+5;6,words=mse+infonce,size=none", DECLARED_ARGS)
    assert (a.n, a.x, a.on, a.name, a.items, a.words, a.size) == (
        7, 2.0, False, "b", (4, 5, 6), ("mse", "infonce"), None)
    assert isinstance(a.x, float) and isinstance(a.n, int)
    d = args.parse("", DECLARED_ARGS)
    assert (d.n, d.x, d.on, d.items, d.size) == (3, 0.5, True, (1, 2), None)
    assert args.parse("items=,size=12", DECLARED_ARGS).items == () and args.parse("size=12", DECLARED_ARGS).size == 12
    assert args.defaults(DECLARED_ARGS, n=9).n == 9


@pytest.mark.parametrize("arg, message", [
    ("n=abc", "config argument n='abc' is not valid; allowed: an integer >= 1"),
    ("n=0", "config argument n='0' must be >= 1"),
    ("x=fast", "config argument x='fast' is not valid; allowed: a number"),
    ("on=maybe", "config argument on='maybe' is not valid; allowed: true | false (1 | 0)"),
    ("name=c", "config argument name='c'; allowed: a | b"),
    ("items=1+-2", "config argument items='-2' must be >= 0"),
    ("bogus=1", "unknown config argument 'bogus'; allowed: ['items', 'n', 'name', 'on', 'size', "
                "'words', 'x']"),
    ("words=mse,infonce", "config argument 'infonce' is not key=value (commas separate "
                          "arguments: separate list items with '+')"),
    ("n=1,n=2", "config argument 'n' given twice"),
])
def test_parse_errors_are_one_line_naming_the_argument(arg, message):
    with pytest.raises(ConfigError) as e:
        args.parse(arg, DECLARED_ARGS)
    assert str(e.value) == message


def test_arg_needs_a_supported_type():
    with pytest.raises(TypeError, match="not supported"):
        Arg(None, "no type")
    with pytest.raises(TypeError, match="not supported"):
        Arg([1], "a list")
    # item describes free-text list items only: elsewhere it would be silently ignored
    with pytest.raises(TypeError, match=r"item='budgets' names the items of a list of free text"):
        Arg((250,), "budgets", item="budgets")
    with pytest.raises(TypeError, match="item='name' names"):
        Arg("x", "one name", item="name")
    with pytest.raises(TypeError, match="item='loss' names"):
        Arg(("mse",), "losses", choices=("mse", "infonce"), item="loss")
    assert "n (default 3; an integer >= 1)" in args.describe(DECLARED_ARGS)
    # a list of text items says what one item is when declared (default "names")
    assert Arg((), "h", kind=str).allowed() == "a '+'-separated list of names"
    assert Arg((), "h", kind=str, item="name=path items").allowed() == (
        "a '+'-separated list of name=path items")


def _thin_files():
    return sorted(n[:-3] for n in os.listdir(CONFIG_DIR) if n.endswith(".py"))


def test_every_config_file_is_a_thin_file_over_the_package():
    """configs/<name>.py = docstring + one import; the package lists exactly these."""
    assert _thin_files() == sorted(configs.CONFIGS) == sorted(
        [*configs.EXPERIMENT_CONFIGS.values(), *configs.PRESET_CONFIGS])
    for name in configs.CONFIGS:
        src = open(os.path.join(CONFIG_DIR, f"{name}.py")).read()
        tree = ast.parse(src)
        assert ast.get_docstring(tree), name
        body = tree.body[1:]
        assert len(body) == 1 and isinstance(body[0], ast.ImportFrom), name
        assert body[0].module == f"sslsteal_jax.configs.{name}", name
        assert "sys.path" not in src


@pytest.mark.parametrize("name", configs.CONFIGS)
def test_every_config_loads_and_its_defaults_validate(name):
    mod = configs.config_module(name)
    from sslsteal_jax.main import EXPERIMENTS
    assert mod.EXPERIMENT in EXPERIMENTS and mod.__doc__
    assert configs.EXPERIMENT_CONFIGS[mod.EXPERIMENT] == configs.PRESET_CONFIGS.get(name, name)
    cfg = mod.get_config("")
    assert cfg.experiment == mod.EXPERIMENT
    if name == "evaluate":  # its one required field
        with pytest.raises(ConfigError, match="config.checkpoints is empty"):
            validate(cfg)
        cfg.checkpoints = base.MAIN_VICTIM
    if name == "import_checkpoint":  # its two required arguments
        with pytest.raises(ConfigError, match="source is required"):
            validate(cfg)
        cfg.source = "simsiam.pth.tar"
        with pytest.raises(ConfigError, match=r"arch=''; allowed: \['resnet18'"):
            validate(cfg)
        cfg.arch = "resnet50"
    validate(cfg)


def test_one_default_victim():
    """The main job's victim is evaluate's fidelity reference (sslsteal_jax.defaults)."""
    from sslsteal_jax.defaults import DEFAULT_VICTIM_CHECKPOINT
    assert load_config("quickstart").victim.checkpoint == DEFAULT_VICTIM_CHECKPOINT
    assert load_config("evaluate").victim_checkpoint == DEFAULT_VICTIM_CHECKPOINT
    assert load_config("budget_scan").victim.checkpoint == DEFAULT_VICTIM_CHECKPOINT


def test_derived_configs_share_the_base_blocks():
    qs = load_config("quickstart")
    scan = load_config("budget_scan")
    assert scan.steal.to_dict() == qs.steal.to_dict()
    assert scan.loss_overrides.to_dict() == qs.loss_overrides.to_dict() == losses.scale_overrides()
    assert load_config("verify").attack.steal.to_dict() == qs.steal.to_dict()
    dm = load_config("defense_matrix").steal.to_dict()
    assert dm == dict(qs.steal.to_dict(), loss="infonce", batch_size=64, epochs=10)
    assert "budget" not in scan and scan.victim.train_if_missing is False
    wm = load_config("watermark_victim")
    assert wm.model.arch == load_config("victim_simclr").model.arch and wm.learning_rate == 3e-4


def test_list_fields_are_tuples_and_string_lists_stay_comma_strings():
    scan = load_config("budget_scan", "losses=mse+infonce")
    assert scan.budgets == (250, 1000, 2500, 5000, 10000, 20000) and scan.seeds == (0,)
    assert scan.losses == "mse,infonce"
    qs = load_config("quickstart", "strategies=direct+head_recreation")
    assert qs.strategies == "direct,head_recreation"
    assert load_config("verify", "budgets=500+2000").attack.budgets == "500,2000"
    assert load_config("defense_matrix").legit.single_task_classes == (5, 7, 9)


def test_steal_settings_are_typed_placeholders():
    """--config.steal.batch_size=128 / learning_rate / temperature can be set (they used
    to be plain None fields, which ml_collections refuses to override); unset they are
    None = the loss's registry setting."""
    from sslsteal_jax.trainers.surrogate import resolve_hparams, steal_config
    cfg = load_config("quickstart", **{"steal.batch_size": 128, "steal.temperature": 0.3,
                                      "loss_overrides.infonce.temperature": 0.3})
    validate(cfg)
    hp = resolve_hparams(steal_config(cfg.steal, "infonce", None, cfg.loss_overrides))
    assert hp == {"batch_size": 128, "learning_rate": 1e-3, "temperature": 0.3}
    hp = resolve_hparams(steal_config(cfg.steal, "mse", None, cfg.loss_overrides))
    assert hp == {"batch_size": 128, "learning_rate": 1e-3, "temperature": 0.3}
    fresh = load_config("quickstart")
    assert fresh.steal.batch_size is None and fresh.steal.learning_rate is None
    with pytest.raises(ConfigError, match="steal.batch_size='128'"):
        load_config("quickstart", **{"steal.batch_size": "128"})


def test_an_explicit_steal_setting_wins_over_the_loss_overrides():
    """``steal.learning_rate`` set by the user holds for every loss; a
    ``loss_overrides.<loss>`` entry only fills fields nobody set (it used to replace
    the explicit value silently, then to be refused by validate)."""
    from sslsteal_jax.trainers.surrogate import resolve_hparams, steal_config

    cfg = load_config("quickstart", **{"steal.learning_rate": 0.01})
    validate(cfg)
    hp = resolve_hparams(steal_config(cfg.steal, "infonce", None, cfg.loss_overrides))
    assert hp["learning_rate"] == 0.01
    assert hp["temperature"] == cfg.loss_overrides.infonce.temperature
    hp = resolve_hparams(steal_config(cfg.steal, "mse", None, cfg.loss_overrides))
    assert hp["learning_rate"] == 0.01


def test_steal_loss_is_not_a_field_of_the_main_job():
    """It used to be silently ignored (the losses are the ``losses`` field)."""
    with pytest.raises(ConfigError, match="no field 'steal.loss'; the stealing losses are the "
                                          "'losses' field"):
        load_config("quickstart", **{"steal.loss": "mse"})
    with pytest.raises(ConfigError, match=r"no field 'budgets'; did you mean 'budget'\?"):
        load_config("quickstart", budgets=(1,))


@pytest.mark.parametrize("name, overrides, message", [
    ("quickstart", {"steal.epochs": 0}, "steal.epochs=0; allowed: an integer >= 1"),
    ("quickstart", {"budget": 0}, "query budget 0 must be >= 1 (and at most the query pool size)"),
    ("quickstart", {"losses": "infonce,bogus"}, "unknown stealing loss(es) ['bogus']"),
    ("quickstart", {"strategies": "direct,bogus"}, "unknown query strategy(ies) ['bogus']"),
    ("quickstart", {"query_dataset": "fashion_mnist:tset"},
     "unknown split 'tset' for dataset 'fashion_mnist' (unknown: ['tset']); allowed splits: "
     "['test', 'train']"),
    ("quickstart", {"steal.model.dtype": "float16"}, "unknown compute dtype 'float16'"),
    ("budget_scan", {"budgets": (250, 0)}, "budgets='250,0'; allowed: integers >= 1, at least "
                                           "one, e.g. --config.budgets=250,1000,5000"),
    ("budget_scan", {"budgets": ("250,x",)}, "budgets='250,x'; allowed: integers >= 1"),
    ("budget_scan", {"seeds": ()}, "seeds=''; allowed: integers >= 0, at least one, e.g. "
                                   "--config.seeds=0,1,2"),
    ("budget_scan", {"stack_mode": "fast"}, "stack_mode='fast'; allowed: ['auto', 'vmap', "
                                            "'unroll']"),
    ("defense_matrix", {"steal.loss": "bogus"}, "steal.loss='bogus'; allowed: mse | infonce"),
    ("defense_matrix", {"steal.loss": "supcon"}, "steal.loss='supcon'; allowed: mse | infonce"),
    ("defense_matrix", {"steal.loss": "xent"}, "steal.loss='xent'; allowed: mse | infonce"),
    ("defense_matrix", {"legit.test_size": 0}, "legit.test_size=0 must be in [1, budget=2000)"),
    ("defense_matrix", {"b4b_measure.specs": ("b4b:beta=x",)},
     "b4b_measure.specs: defense spec 'b4b:beta=x'"),
    ("verify", {"attack.budgets": "500,-1"}, "attack.budgets='500,-1'; allowed: comma-separated "
                                             "integers >= 1"),
    ("verify", {"attack.losses": "all"}, "unknown stealing loss(es) ['all'] in attack.losses"),
    ("verify", {"di.private_size": "half"}, "di.private_size='half'; allowed: auto | all"),
    ("victim_simclr", {"epochs": 0}, "epochs=0; allowed: an integer >= 1"),
    ("victim_simclr", {"model.arch": "resnet11"}, "model.arch='resnet11'; allowed: resnet10"),
    ("watermark_victim", {"model.watermark_classes": 3},
     "model.watermark_classes=3; allowed: 2 | 4"),
])
def test_validate_names_the_first_bad_field(name, overrides, message):
    cfg = load_config(name, overrides=overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_unknown_dataset_names_the_closest_offline_one():
    """Names that are not offline datasets are looked up in tensorflow-datasets' catalogue
    (nothing downloaded or prepared)."""
    with pytest.raises(ConfigError, match=r"unknown dataset 'fashion_mnst' \(did you mean "
                                          r"'fashion_mnist'\?\)"):
        validate(load_config("quickstart", dataset="fashion_mnst"))
    base.check_dataset("query_dataset", "cifar10")  # a catalogue name is accepted


def test_config_arguments_keep_their_meaning():
    """The old argument semantics: '+' lists, the victim switch, scale-dependent defaults."""
    qs = load_config("quickstart", "victim=scratch,epochs=7,budget=2000")
    assert (qs.victim.train_from_scratch, qs.steal.epochs, qs.budget) == (True, 7, 2000)
    tiny = load_config("defense_matrix", "scale=tiny")
    assert (tiny.budget, tiny.steal.epochs, [f["name"] for f in tiny.families]) == (
        500, 3, ["none", "gaussian", "b4b"])
    assert load_config("defense_matrix", "scale=tiny,budget=300").budget == 300
    with pytest.raises(ConfigError, match=r"unknown defense families \['nope'\]"):
        load_config("defense_matrix", "families=nope")
    assert load_config("watermark_victim", "init_from=").init_from is None
    v = load_config("verify", "budgets=,watermark=0,suspects=a=x+b=y")
    assert (v.attack.budgets, v.watermark.enabled, v.suspects) == ("", False, "a=x,b=y")
    # a comma after a name=path item ends the list: the error says to continue it with '+'
    with pytest.raises(ConfigError, match=r"unknown config argument 'b'; allowed: .*\] "
                                          r"\(commas separate arguments: separate list items "
                                          r"with '\+'\)$"):
        load_config("verify", "suspects=a=x,b=y")
    with pytest.raises(ConfigError, match=r"unknown config argument 'b'; allowed: [^(]*$"):
        load_config("verify", "seed=1,b=y")  # not after a list of items: no hint
    with pytest.raises(ConfigError, match="train_size=100 must be >= batch_size=256"):
        load_config("victim_simclr", "train_size=100")
    with pytest.raises(ConfigError, match="takes no arguments"):
        load_config("evaluate", "checkpoints=x")
    with pytest.raises(ConfigError, match=r"unknown config 'quickstrat' \(did you mean "
                                          r"'quickstart'\?\)"):
        load_config("quickstrat")
    assert isinstance(qs, ml_collections.ConfigDict)


def test_paper_scale_configs_resolve_to_the_reference_settings():
    """configs/cifar10.py and configs/imagenet_simsiam.py: the reference's per-loss
    settings (CIFAR: the registry's, unscaled; ImageNet: SGD 0.1 x batch / 256, batch 512,
    weight decay 0, tau 0.1, T 1000), budgets, sources and the victim command."""
    from sslsteal_jax.configs import cifar10
    from sslsteal_jax.trainers.surrogate import resolve_hparams, steal_config

    def hparams(cfg, loss):
        return resolve_hparams(steal_config(cfg.steal, loss, None, cfg.loss_overrides))

    c10 = load_config("cifar10")
    validate(c10)
    assert (c10.experiment, c10.protocol, c10.steal.epochs, c10.dataset) == (
        "budget_scan", "epochs", 100, "cifar10")
    assert c10.budgets == (500, 1000, 5000, 10000, 20000, 30000, 40000, 50000)
    assert c10.query_sources == "cifar10:train,svhn_cropped:train,stl10:unlabelled"
    assert c10.losses == "all" and c10.probe_test_size == 1000 and c10.test_split == "test"
    assert hparams(c10, "infonce") == {"batch_size": 256, "learning_rate": 3e-4,
                                       "temperature": 0.07}
    assert hparams(c10, "softnn")["temperature"] == 100.0
    assert hparams(c10, "mse")["batch_size"] == 64
    vic = load_config("victim_simclr", cifar10.VICTIM_ARG)
    assert (vic.dataset, vic.model.arch, vic.model.width, vic.model.stem, vic.epochs,
            vic.batch_size, vic.learning_rate, vic.temperature) == (
        "cifar10", "resnet18", 64, "cifar", 200, 256, 3e-4, 0.07)
    assert cifar10.VICTIM_ARG in cifar10.__doc__

    im = load_config("imagenet_simsiam")
    validate(im)
    assert (im.dataset, im.test_split, im.stack) == ("imagenet2012@224x224x3", "validation", 1)
    assert im.stream.enabled is True and im.stream.answer_chunk == 1000  # 37.6 GB of queries
    assert im.query_sources == "imagenet2012@224x224x3:train[:250000]"
    assert im.budgets == (50000, 100000, 150000, 200000, 250000)
    assert (im.steal.optimizer, im.steal.weight_decay, im.steal.model.dtype) == (
        "sgd", 0.0, "bfloat16")
    assert hparams(im, "infonce") == {"batch_size": 512, "learning_rate": 0.2,
                                      "temperature": 0.1}
    assert hparams(im, "softnn")["temperature"] == 1000.0
    assert hparams(im, "mse")["learning_rate"] == 0.2
    small = load_config("imagenet_simsiam", "optimizer=lars,batch_size=256,image_size=64,"
                        "sources=imagenet2012:train+cifar10:train")
    assert small.steal.optimizer == "lars" and small.steal.learning_rate == 0.1
    assert small.query_sources == "imagenet2012@64x64x3:train,cifar10@64x64x3:train"
    with pytest.raises(ConfigError, match=r"steal.optimizer='lamb'; allowed: adam \| adamw"):
        validate(load_config("imagenet_simsiam", **{"steal.optimizer": "lamb"}))


def test_paper_scale_time_estimates_match_their_docstrings():
    """The docstrings' FLOP arithmetic, recomputed by each config's ``estimate``:
    CIFAR scan 100 epochs x 156,500 queries x 4 losses x 3 sources x 3 x 0.967 GFLOP plus
    5,148,000 encoded images; ImageNet 100 x 750,000 x 3 losses x 3 x 7.994 GFLOP plus
    250,000 + 17 x 110,000 encoded images; hours at 40 % of the bf16 peak."""
    from sslsteal_jax.configs import cifar10, imagenet_simsiam

    est = cifar10.estimate(load_config("cifar10"))
    assert est["scan"]["flops"] == pytest.approx(
        3 * 0.967e9 * 100 * 156500 * 12 + 0.967e9 * 5148000)
    assert est["victim"]["flops"] == pytest.approx(3 * 0.967e9 * 2e7)
    assert est["scan"]["one H100/H200"] == pytest.approx(
        est["scan"]["flops"] / (0.4 * 989e12) / 3600)
    for part, text in (("victim", "victim ~{h:.2f} h on one H100/H200 (~{t:.2f} h on a v4-8)"),
                       ("scan", "scan ~{h:.2f} h on one\nH100/H200 (~{t:.2f} h on a v4-8)")):
        e = est[part]
        assert text.format(h=e["one H100/H200"], t=e["TPU v4-8"]) in cifar10.__doc__
    im = imagenet_simsiam.estimate(load_config("imagenet_simsiam"))
    assert im["flops"] == pytest.approx(3 * 7.994e9 * 100 * 750000 * 3
                                        + 7.994e9 * (250000 + 17 * 110000))
    assert (f"~{im['one H100/H200']:.1f} h on one H100/H200, ~{im['TPU v4-8']:.1f} h on a "
            "TPU v4-8") in imagenet_simsiam.__doc__
    one = imagenet_simsiam.estimate(load_config("imagenet_simsiam", "losses=infonce,"
                                                "budgets=250000"))
    assert f"~{one['one H100/H200']:.2f} h / ~{one['TPU v4-8']:.2f} h" in imagenet_simsiam.__doc__
