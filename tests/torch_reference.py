"""Plain-PyTorch reference encoders with torchvision's and timm's module names (test oracle).

The torchvision and timm wheels of the local registry are built against the
CUDA torch and fail to import next to the CPU torch wheel, so the reference
models for the import tests are written here in plain torch, with exactly the
module names, layer order and defaults of

* torchvision's ``ResNet`` (``conv1``, ``bn1``, ``maxpool`` = ``MaxPool2d(3, 2, 1)``,
  ``layer1..4`` of ``BasicBlock`` / ``Bottleneck`` with ``conv1``, ``bn1``,
  ``conv2``, ``bn2`` [, ``conv3``, ``bn3``], ``downsample`` = Sequential(1x1 conv,
  BN) when the stride or width changes, the stride on the 3x3 convolution,
  ``avgpool``, ``fc``; BatchNorm eps 1e-5; Kaiming-normal fan-out init), with the
  CIFAR variant that SSL code uses (``conv1`` 3x3 stride 1 padding 1, ``maxpool``
  replaced by ``nn.Identity``);
* timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
  ``blocks.<i>`` with ``norm1``, ``attn.qkv`` (one Linear, outputs ordered
  q|k|v x head x channel), ``attn.proj``, ``norm2``, ``mlp.fc1``, exact GELU,
  ``mlp.fc2``; ``norm`` before token pooling or ``fc_norm`` after average pooling,
  as timm's ``global_pool`` / ``fc_norm`` rule; LayerNorm eps 1e-6; qkv bias);
* the projection heads of SimSiam (``simsiam/builder.py``), MoCo v2
  (``moco/builder.py``: Linear-ReLU-Linear) and MoCo v3 (``moco/builder.py``
  ``_build_mlp``), and DINO's head (``vision_transformer.py`` ``DINOHead``).

``representation(model, x)`` is the encoder's output without the classifier /
head: what the imported flax model returns as ``h``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

RESNETS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
           "resnet50": ("bottleneck", (3, 4, 6, 3))}
VITS = {"vit_s": (384, 6), "vit_b": (768, 12)}  # width, heads (depth 12)


def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-layout ResNet; ``stem="cifar"``: 3x3 stride-1 conv1, no max-pool.
    ``width``: first-stage channels (64 in torchvision; smaller for fast tests)."""

    def __init__(self, arch="resnet18", stem="imagenet", num_classes=1000, width=64):
        super().__init__()
        kind, layers = RESNETS[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.inplanes = width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet"
                        else nn.Identity())
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        return self.fc(self.forward_features(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, embed_dim, in_chans=3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """timm-layout ViT. ``global_pool``: "token" or "avg"; ``fc_norm`` None follows
    timm (LayerNorm after pooling for "avg"), False keeps ``norm`` before pooling."""

    def __init__(self, img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
                 global_pool="token", fc_norm=None, num_classes=0):
        super().__init__()
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.global_pool = global_pool
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if not use_fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if use_fc_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward_features(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward_head(self, x, pre_logits=False):
        x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def vit(arch="vit_s", img_size=224, global_pool="token", fc_norm=None, num_heads=None,
        num_classes=0):
    """ViT-S/16 or ViT-B/16 (timm ``vit_small_patch16_224`` / ``vit_base_patch16_224``)."""
    width, heads = VITS[arch]
    return VisionTransformer(img_size, 16, width, 12, num_heads or heads, global_pool, fc_norm,
                             num_classes)


def representation(model, x):
    """The encoder output without classifier / head, float32 ``(B, D)``."""
    if isinstance(model, ResNet):
        return model.forward_features(x)
    return model.forward_head(model.forward_features(x), pre_logits=True)


def randomize(model, generator=None):
    """Give every BatchNorm / LayerNorm non-trivial affine parameters and BatchNorm
    running statistics (as a trained model has), and every bias a non-zero value, so
    the comparison exercises each array. Returns ``model`` in eval mode."""
    g = generator or torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.normalized_shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.normalized_shape, generator=g) * 0.1)
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.02)
    return model.eval()


def simsiam_projector(prev_dim, dim=2048):
    """SimSiam's 3-layer projector that replaces ``encoder.fc`` (indices 0-7)."""
    return nn.Sequential(nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim),
                         nn.ReLU(inplace=True), nn.Linear(prev_dim, prev_dim, bias=False),
                         nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True), nn.Linear(prev_dim, dim),
                         nn.BatchNorm1d(dim, affine=False))


def mocov3_mlp(num_layers, input_dim, mlp_dim, output_dim):
    """MoCo v3's ``_build_mlp``: Linear(no bias)-BN-ReLU blocks, last BN without affine."""
    layers = []
    for i in range(num_layers):
        d1 = input_dim if i == 0 else mlp_dim
        d2 = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(d1, d2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d2), nn.ReLU(inplace=True)]
        else:
            layers.append(nn.BatchNorm1d(d2, affine=False))
    return nn.Sequential(*layers)


def mocov2_head(dim_mlp, dim=128):
    """MoCo v2's MLP head: Linear-ReLU-Linear (with biases) replacing ``encoder_q.fc``."""
    return nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), nn.Linear(dim_mlp, dim))


def dino_head_state(in_dim, out_dim=64, hidden=32, bottleneck=16, prefix="head."):
    """State-dict entries of DINO's head (an MLP with GELUs, then a weight-normalised
    ``last_layer``), which is not a plain Sequential of Linear / BatchNorm1d."""
    return {f"{prefix}mlp.0.weight": torch.randn(hidden, in_dim),
            f"{prefix}mlp.0.bias": torch.zeros(hidden),
            f"{prefix}mlp.2.weight": torch.randn(hidden, hidden),
            f"{prefix}mlp.2.bias": torch.zeros(hidden),
            f"{prefix}mlp.4.weight": torch.randn(bottleneck, hidden),
            f"{prefix}mlp.4.bias": torch.zeros(bottleneck),
            f"{prefix}last_layer.weight_g": torch.ones(out_dim, 1),
            f"{prefix}last_layer.weight_v": torch.randn(out_dim, bottleneck)}
