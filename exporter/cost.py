"""Analytic parameter and MAC counts of a static variant.

MACs count the multiply-accumulates of matrix products and the patch convolution (what
`torch.utils.flop_counter` counts, halved); LayerNorm, softmax, GELU and token selection are
left out, as is usual for ViT GMAC figures (DeiT-Ti at 224 px: 1.25 GMACs)."""

from __future__ import annotations

from exporter.static import StaticSpec


def param_count(spec: StaticSpec) -> int:
    C, h, d = spec.embed_dim, spec.mlp_hidden, spec.num_heads * spec.head_dim
    qkv = C * 3 * d + (3 * d if spec.qkv_bias else 0)
    block = 4 * C + qkv + d * C + C + C * h + h + h * C + C
    heads = (2 if spec.distilled else 1) * (C * spec.num_classes + spec.num_classes)
    patch = spec.in_chans * spec.patch_size ** 2 * C + C
    tokens = spec.num_tokens * C  # prefix tokens + patch positions
    return patch + tokens + spec.depth * block + 2 * C + heads


def mac_count(spec: StaticSpec) -> int:
    C, h, d = spec.embed_dim, spec.mlp_hidden, spec.num_heads * spec.head_dim
    grid = (spec.resolution // spec.patch_size) ** 2
    macs = grid * C * spec.in_chans * spec.patch_size ** 2
    n = spec.num_tokens
    for n_keep in spec.keeps:
        macs += n * C * 3 * d + 2 * n * n * d + n * d * C  # qkv, q@k^T and attn@v, proj
        if n_keep is not None:
            n = spec.num_prefix_tokens + n_keep + (1 if spec.fuse_tokens else 0)
        macs += 2 * n * C * h  # fc1, fc2 on the tokens left
    macs += (2 if spec.distilled else 1) * C * spec.num_classes
    return macs
