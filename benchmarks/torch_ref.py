"""PyTorch CPU reference of the surrogate steal step, for the throughput ratio.

The same computation as ``sslsteal_jax.attacks.direct.make_steal_step`` with
an ``mse``/``infonce`` loss on a CIFAR-stem ResNet (``models/resnet.py``): uint8
images -> float in [0, 1] -> fixed normalisation -> ResNet (BatchNorm in
training mode, momentum 0.1 = flax 0.9, eps 1e-5) -> global average pool ->
loss against the API answers -> Adam with L2-coupled weight decay (as
``training/optim.make_optimizer("adam")`` and ``torch.optim.Adam`` in the
reference code of Dziedzic et al., ICML 2022). Only used by
``benchmarks/run.py``; needs the optional ``[bench]`` extra (CPU torch).
"""
from __future__ import annotations

import time

import numpy as np

_STAGES = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def build_torch_step(arch: str, width: int, channels: int, loss: str = "mse",
                     temperature: float = 0.1, channels_last: bool = False):
    """Return ``(step, n_params)``; ``step(images uint8 torch (B,H,W,C), answers float32 (B,D))``
    runs one training step and returns the loss as a Python float.

    Raises:
      ValueError: architecture or loss not supported by the reference.
    """
    import torch
    from torch import nn
    import torch.nn.functional as F

    if arch not in _STAGES:
        raise ValueError(f"torch reference supports arch in {sorted(_STAGES)}, got {arch!r}")
    if loss not in ("mse", "infonce"):
        raise ValueError(f"torch reference supports loss 'mse' or 'infonce', got {loss!r}")

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            nn.init.zeros_(self.b2.weight)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                           nn.BatchNorm2d(cout))

        def forward(self, x):
            y = F.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            r = x if self.short is None else self.short(x)
            return F.relu(r + y)

    layers = [nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i, n in enumerate(_STAGES[arch]):
        for j in range(n):
            cout = width * 2 ** i
            layers.append(Block(cin, cout, 2 if i > 0 and j == 0 else 1))
            cin = cout
    net = nn.Sequential(*layers)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)

    def loss_fn(s, v):
        if loss == "mse":
            return F.mse_loss(s, v)
        n = s.shape[0]
        u = F.normalize(torch.cat([s, v]), dim=1)
        logits = u @ u.T / temperature
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
        return F.cross_entropy(logits, partner)

    def step(images, answers):
        x = images.permute(0, 3, 1, 2).float().div(255.0).sub(0.5).div(0.25)
        x = x.contiguous(memory_format=memory_format)
        opt.zero_grad(set_to_none=True)
        s = net(x).mean(dim=(2, 3))
        val = loss_fn(s, answers)
        val.backward()
        opt.step()
        return float(val.detach())

    return step, sum(p.numel() for p in net.parameters())


def time_torch_step(arch: str, width: int, image_shape, batch: int, answer_dim: int,
                    loss: str = "mse", steps: int = 5, warmup: int = 2, threads: int | None = None,
                    channels_last: bool = False, seed: int = 0) -> dict:
    """Seconds per steal step of the torch reference (median of ``steps`` timed steps).

    Returns ``{"seconds_per_step", "images_per_second", "threads", "torch_version", "n_params"}``.
    """
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    step, n_params = build_torch_step(arch, width, image_shape[-1], loss, channels_last=channels_last)
    images = torch.from_numpy(rng.integers(0, 256, (batch, *image_shape), dtype=np.uint8))
    answers = torch.from_numpy(rng.standard_normal((batch, answer_dim), dtype=np.float32))
    for _ in range(warmup):
        step(images, answers)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(images, answers)
        times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    return {"seconds_per_step": sec, "images_per_second": batch / sec,
            "threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "n_params": int(n_params)}
