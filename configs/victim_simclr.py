"""SimCLR victim training config (docs/science.md section 4, scaled to CPU).

Usage: ``--config=configs/victim_simclr.py:dataset=fashion_mnist,arch=resnet10,width=16,epochs=22``
(any subset of the arguments). Further overrides: ``--config.learning_rate=...``.
``train_size=N``: train on the first N train images only (a small private set for
dataset inference, e.g. ``width=8,epochs=160,train_size=1024``; configs/verify.py then
takes exactly these N images as the private set); default: the whole train split.
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_arg  # noqa: E402

ARGS = ("dataset", "arch", "width", "stem", "epochs", "batch_size", "lr", "temperature", "seed",
        "head_hidden", "head_out", "train_size")


def get_config(arg: str = ""):
    a = parse_arg(arg, ARGS)
    c = ml_collections.ConfigDict()
    c.experiment = "train_victim"
    c.dataset = a.get("dataset", "fashion_mnist")
    c.model = ml_collections.ConfigDict(dict(
        arch=a.get("arch", "resnet10"), width=a.int("width", 16), stem=a.get("stem", "cifar"),
        head_hidden=a.int("head_hidden", 512), head_out=a.int("head_out", 128),
        dtype="float32"))
    c.augment = ml_collections.ConfigDict(dict(
        crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=0.5, jitter_p=0.8,
        jitter_strength=0.5, gray_p=0.2, blur_p=0.0, blur_sigma=(0.1, 2.0)))
    c.temperature = a.float("temperature", 0.2)
    c.batch_size = a.int("batch_size", 256)
    c.epochs = a.int("epochs", 22)
    c.optimizer = "adam"
    c.learning_rate = a.float("lr", 1e-3)
    c.weight_decay = 1e-4
    c.warmup_epochs = 1.0
    c.seed = a.int("seed", 0)
    c.checkpoint_every_steps = 500
    c.log_every_steps = 50
    c.overwrite = False
    c.victim_train_size = ml_collections.config_dict.placeholder(int)  # None = whole train split
    if a.get("train_size"):
        c.victim_train_size = int(a["train_size"])
        if c.victim_train_size < c.batch_size:
            raise ValueError(f"train_size={c.victim_train_size} must be >= batch_size={c.batch_size}")
    c.probe_train_size = ml_collections.config_dict.placeholder(int)
    # Warm restart from a SimCLR checkpoint (fresh optimizer and schedule).
    c.init_from = ml_collections.config_dict.placeholder(str)
    return c
