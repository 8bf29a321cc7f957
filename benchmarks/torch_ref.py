"""PyTorch reference of the surrogate steal step (and of inference), for the throughput ratio.

The same computation as ``sslsteal_jax.attacks.direct.make_steal_step`` with
an ``mse``/``infonce`` loss on the ResNets of ``models/resnet.py`` (basic
blocks for ResNet-10/18/34, bottlenecks for ResNet-50; CIFAR stem = 3x3 conv
stride 1, ImageNet stem = 7x7 conv stride 2 + 3x3 max-pool stride 2): uint8
images -> float in [0, 1] -> fixed normalisation -> ResNet (BatchNorm in
training mode, momentum 0.1 = flax 0.9, eps 1e-5) -> global average pool ->
loss against the API answers -> Adam with L2-coupled weight decay (as
``training/optim.make_optimizer("adam")`` and ``torch.optim.Adam`` in the
reference code of Dziedzic et al., ICML 2022).

Runs on any torch device: ``device="cpu"`` (the default; ``benchmarks/run.py``)
or ``"cuda"`` (``benchmarks/accelerator_check.py``). ``dtype="bfloat16"``
computes the network under ``torch.autocast(device_type, torch.bfloat16)``
(mixed precision: float32 parameters and optimizer state, bf16 convolutions),
the pooled output and the loss in float32, like the flax models with
``dtype=bfloat16``. Needs the optional ``[bench]`` extra (torch).

The ImageNet stem's max-pool pads 1 on each side, as the flax model's
(``models/resnet.py``, torchvision's layout).
"""
from __future__ import annotations

import time

import numpy as np

# name -> (blocks per stage, bottleneck?)
_STAGES = {"resnet10": ((1, 1, 1, 1), False), "resnet18": ((2, 2, 2, 2), False),
           "resnet34": ((3, 4, 6, 3), False), "resnet50": ((3, 4, 6, 3), True)}
_DTYPES = ("float32", "bfloat16")


def build_torch_encoder(arch: str, width: int, channels: int, stem: str = "cifar",
                        device="cpu", channels_last: bool = False):
    """The torch twin of ``models.build_encoder(arch, width, stem)`` without the pooling.

    Args:
      arch: "resnet10", "resnet18", "resnet34" or "resnet50".
      width: first-stage channels (64 = standard ResNet).
      channels: input channels (1 or 3).
      stem: "cifar" or "imagenet".
      device: torch device or its name ("cpu", "cuda", "cuda:1").
      channels_last: store weights NHWC (``torch.channels_last``).
    Returns:
      ``torch.nn.Sequential`` mapping float NCHW images (normalised) to the last
      stage's feature map ``(B, D, h, w)``, on ``device``, in training mode.
    Raises:
      ValueError: architecture or stem not supported by the reference.
    """
    import torch
    from torch import nn
    import torch.nn.functional as F

    if arch not in _STAGES:
        raise ValueError(f"torch reference supports arch in {sorted(_STAGES)}, got {arch!r}")
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"torch reference supports stem 'cifar' or 'imagenet', got {stem!r}")

    class Block(nn.Module):
        expansion = 1

        def __init__(self, cin, filters, stride):
            super().__init__()
            cout = filters
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

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, filters, stride):
            super().__init__()
            cout = filters * 4
            self.c1 = nn.Conv2d(cin, filters, 1, 1, 0, bias=False)
            self.b1 = nn.BatchNorm2d(filters)
            self.c2 = nn.Conv2d(filters, filters, 3, stride, 1, bias=False)
            self.b2 = nn.BatchNorm2d(filters)
            self.c3 = nn.Conv2d(filters, cout, 1, 1, 0, bias=False)
            self.b3 = nn.BatchNorm2d(cout)
            nn.init.zeros_(self.b3.weight)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                           nn.BatchNorm2d(cout))

        def forward(self, x):
            y = F.relu(self.b1(self.c1(x)))
            y = F.relu(self.b2(self.c2(y)))
            y = self.b3(self.c3(y))
            r = x if self.short is None else self.short(x)
            return F.relu(r + y)

    stages, bottleneck = _STAGES[arch]
    block = Bottleneck if bottleneck else Block
    if stem == "cifar":
        layers = [nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    else:
        layers = [nn.Conv2d(channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                  nn.MaxPool2d(3, 2, 1)]
    cin = width
    for i, n in enumerate(stages):
        for j in range(n):
            layers.append(block(cin, width * 2 ** i, 2 if i > 0 and j == 0 else 1))
            cin = width * 2 ** i * block.expansion
    net = nn.Sequential(*layers).to(device=torch.device(device))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def _prepare(images, memory_format):
    """uint8 NHWC -> normalised float32 NCHW in ``memory_format`` (as models/resnet.py)."""
    x = images.permute(0, 3, 1, 2).float().div(255.0).sub(0.5).div(0.25)
    return x.contiguous(memory_format=memory_format)


def _autocast(torch, device, dtype: str):
    if dtype not in _DTYPES:
        raise ValueError(f"torch reference supports dtype in {list(_DTYPES)}, got {dtype!r}")
    if dtype == "float32":
        import contextlib
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


#: Stealing losses the torch reference implements.
TORCH_LOSSES = ("mse", "infonce")


def torch_stealing_loss(loss: str, temperature: float = 0.1, device="cpu"):
    """The stealing loss ``fn(s float32 (B, D), v float32 (B, D)) -> scalar tensor`` in torch.

    ``"mse"``: mean over batch and dimensions of ``(s - v)^2`` (``losses.mse_loss``);
    ``"infonce"``: NT-Xent over the 2B rows ``[s; v]`` (L2-normalised, cosine / ``temperature``,
    each row's positive its partner, self-similarity masked), as ``losses.infonce_loss``.
    ``v`` (the API's answers) carries no gradient in either.

    Raises:
      ValueError: ``loss`` not in :data:`TORCH_LOSSES`.
    """
    import torch
    import torch.nn.functional as F

    if loss not in TORCH_LOSSES:
        raise ValueError(f"torch reference supports loss 'mse' or 'infonce', got {loss!r}")
    dev = torch.device(device)
    masks = {}

    def loss_fn(s, v):
        v = v.detach()
        if loss == "mse":
            return F.mse_loss(s, v)
        n = s.shape[0]
        if n not in masks:
            masks[n] = (torch.eye(2 * n, dtype=torch.bool, device=dev),
                        torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(dev))
        eye, partner = masks[n]
        u = F.normalize(torch.cat([s, v]), dim=1)
        logits = u @ u.T / temperature
        logits = logits.masked_fill(eye, float("-inf"))
        return F.cross_entropy(logits, partner)

    return loss_fn


def build_torch_step(arch: str, width: int, channels: int, loss: str = "mse",
                     temperature: float = 0.1, channels_last: bool = False, *,
                     stem: str = "cifar", device="cpu", dtype: str = "float32",
                     sync: bool = True):
    """Return ``(step, n_params)``; ``step(images uint8 torch (B,H,W,C), answers float32 (B,D))``
    runs one training step on ``device``.

    Args:
      arch, width, channels, stem, device, channels_last: as :func:`build_torch_encoder`
        (``images`` and ``answers`` must already be on ``device``).
      loss: "mse" or "infonce" (NT-Xent over surrogate outputs and answers, ``temperature``).
      dtype: "float32", or "bfloat16" (network under ``torch.autocast``; loss in float32).
      sync: return the loss as a Python float (waits for the device); False
        returns the detached loss tensor without waiting, so a timed loop can
        queue steps and call ``torch.cuda.synchronize()`` once.
    Raises:
      ValueError: architecture, stem, loss or dtype not supported by the reference.
    """
    import torch

    loss_fn = torch_stealing_loss(loss, temperature, device)  # validates loss
    _autocast(torch, device, dtype)  # validates dtype
    net = build_torch_encoder(arch, width, channels, stem, device, channels_last)
    dev = next(net.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)

    def step(images, answers):
        x = _prepare(images, memory_format)
        opt.zero_grad(set_to_none=True)
        with _autocast(torch, dev, dtype):
            feats = net(x)
        s = feats.float().mean(dim=(2, 3))
        val = loss_fn(s, answers.float())
        val.backward()
        opt.step()
        return float(val.detach()) if sync else val.detach()

    return step, sum(p.numel() for p in net.parameters())


def build_torch_apply(arch: str, width: int, channels: int, stem: str = "cifar", device="cpu",
                      channels_last: bool = False, dtype: str = "float32"):
    """Return ``(apply, n_params)``: ``apply(images uint8 torch (B,H,W,C)) -> float32 (B, D)``,
    the pooled representation in inference mode (BatchNorm running statistics,
    ``torch.inference_mode``), on ``device``; asynchronous on CUDA (synchronize
    to time it). Arguments as :func:`build_torch_step`.
    """
    import torch

    _autocast(torch, device, dtype)
    net = build_torch_encoder(arch, width, channels, stem, device, channels_last).eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    dev = next(net.parameters()).device

    def apply(images):
        with torch.inference_mode(), _autocast(torch, dev, dtype):
            return net(_prepare(images, memory_format)).float().mean(dim=(2, 3))

    return apply, sum(p.numel() for p in net.parameters())


def synchronize(device) -> None:
    """Wait for all queued work on ``device`` (``torch.cuda.synchronize`` on CUDA; no-op on CPU)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_torch_step(arch: str, width: int, image_shape, batch: int, answer_dim: int,
                    loss: str = "mse", steps: int = 5, warmup: int = 2, threads: int | None = None,
                    channels_last: bool = False, seed: int = 0, *, stem: str = "cifar",
                    device="cpu", dtype: str = "float32") -> dict:
    """Seconds per steal step of the torch reference (median of ``steps`` timed steps,
    each synchronised with the device).

    Returns ``{"seconds_per_step", "images_per_second", "threads", "torch_version",
    "n_params", "device", "dtype"}``.
    """
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    step, n_params = build_torch_step(arch, width, image_shape[-1], loss, channels_last=channels_last,
                                      stem=stem, device=device, dtype=dtype)
    images = torch.from_numpy(rng.integers(0, 256, (batch, *image_shape), dtype=np.uint8)).to(device)
    answers = torch.from_numpy(rng.standard_normal((batch, answer_dim), dtype=np.float32)).to(device)
    for _ in range(warmup):
        step(images, answers)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(images, answers)  # returns a float: waits for the device
        times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    return {"seconds_per_step": sec, "images_per_second": batch / sec,
            "threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "n_params": int(n_params), "device": str(device), "dtype": dtype}
