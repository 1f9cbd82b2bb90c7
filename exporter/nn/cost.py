"""Analytic parameter and MAC counts of a static variant.

MACs count the multiply-accumulates of matrix products and the patch convolution (what
`torch.utils.flop_counter` counts, halved); LayerNorm, softmax, GELU and token selection are
left out, as is usual for ViT GMAC figures (DeiT-Ti at 224 px: 1.25 GMACs). SiT's Token
Slimming Modules count their MLP and the aggregation matmul; ViT-Slim's per-layer sizes and
kept token positions (a one-hot selection matmul) are counted layer by layer."""

from __future__ import annotations

from exporter.nn.static import StaticSpec


def param_count(spec: StaticSpec) -> int:
    C = spec.embed_dim
    total = 0
    for i, n_keep in enumerate(spec.keeps):
        dims = spec.layer(i)
        h, d = dims.mlp_hidden, dims.num_heads * dims.head_dim
        qkv = C * 3 * d + (3 * d if spec.qkv_bias else 0)
        total += 4 * C + qkv + d * C + C + C * h + h + h * C + C
        if n_keep is not None and spec.token_reducer == "tsm":
            th = spec.tsm_hidden
            total += 2 * C + C * th + th + th * n_keep + n_keep
    heads = (2 if spec.distilled else 1) * (C * spec.num_classes + spec.num_classes)
    patch = spec.in_chans * spec.patch_size ** 2 * C + C
    tokens = spec.num_tokens * C  # prefix tokens + patch positions
    return patch + tokens + total + 2 * C + heads


def mac_count(spec: StaticSpec) -> int:
    C = spec.embed_dim
    grid = spec.grid_tokens
    macs = grid * C * spec.in_chans * spec.patch_size ** 2
    n = spec.num_tokens
    if spec.token_positions is not None:
        macs += (n - spec.num_prefix_tokens) * grid * C  # the one-hot position selection
    for i, n_keep in enumerate(spec.keeps):
        dims = spec.layer(i)
        h, d = dims.mlp_hidden, dims.num_heads * dims.head_dim
        macs += n * C * 3 * d + 2 * n * n * d + n * d * C  # qkv, q@k^T and attn@v, proj
        if n_keep is not None:
            if spec.token_reducer == "tsm":
                m, th = n - spec.num_prefix_tokens, spec.tsm_hidden
                macs += m * C * th + m * th * n_keep + n_keep * m * C  # MLP, weighted sum
            n = spec.num_prefix_tokens + n_keep + (1 if spec.fuse_tokens else 0)
        macs += 2 * n * C * h  # fc1, fc2 on the tokens left
    macs += (2 if spec.distilled else 1) * C * spec.num_classes
    return macs
