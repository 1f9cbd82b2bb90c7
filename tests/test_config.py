import pytest

from exporter.errors import ConfigError
from exporter.nn.config import (
    Variant,
    VariantGrid,
    ViTConfig,
    block_keeps,
    default_prune_blocks,
    keep_count,
    parse_floats,
    resolve,
    token_schedule,
)


def test_default_prune_blocks_match_supervit_on_12_blocks():
    assert default_prune_blocks(12) == (3, 6, 9)
    assert default_prune_blocks(4) == (1, 2, 3)


def test_keep_count_rules_differ_by_whether_cls_counts():
    # 197 tokens (196 patches + CLS): SuperViT ceil(0.7*197)=138, EViT ceil(0.7*196)=138;
    # at 0.5: SuperViT ceil(98.5)=99, EViT 98.
    assert keep_count("supervit", 0.5, 197, 1) == 99
    assert keep_count("evit", 0.5, 197, 1) == 98
    assert keep_count("supervit", 1.0, 197, 1) == 196  # never more than the patch tokens


def test_token_schedule_supervit_deit_s_shape():
    cfg = ViTConfig(embed_dim=384, num_heads=6)
    tokens = token_schedule(cfg, 0.5, 224)
    assert tokens[:4] == (197,) * 4
    assert tokens[4] == 1 + 99  # after block 3
    assert tokens[7] == 1 + 50  # ceil(0.5 * 100) = 50
    assert tokens[10] == 1 + 26  # ceil(0.5 * 51) = 26
    assert len(tokens) == 13


def test_token_schedule_with_fusion_adds_one_token():
    cfg = ViTConfig(embed_dim=384, num_heads=6, keep_rule="evit", fuse_tokens=True)
    assert token_schedule(cfg, 0.7, 224)[4] == 1 + 138 + 1


def test_heads_slicing_rounds_to_whole_heads():
    cfg = ViTConfig(embed_dim=768, num_heads=12)
    s = resolve(cfg, Variant(0.3))
    assert (s.num_heads, s.embed_dim, s.head_dim, s.mlp_hidden) == (4, 256, 64, 1024)
    assert s.id == "w256_k100_r224"


def test_ratio_slicing_isolated_activation():
    cfg = ViTConfig(embed_dim=384, num_heads=6, slicing="ratio", min_ratio=0.25)
    assert resolve(cfg, Variant(0.25)).channels == "first"
    assert resolve(cfg, Variant(1.0)).channels == "first"
    mid = resolve(cfg, Variant(0.5))
    assert (mid.channels, mid.embed_dim, mid.num_heads, mid.head_dim, mid.mlp_hidden) == ("last", 192, 6, 32, 768)


@pytest.mark.parametrize("slicing,width,msg", [
    ("ratio", 0.26, "cannot share evenly"),
    ("heads", 0.01, "rounds to 0 heads"),
])
def test_widths_that_do_not_fit_the_slicing_are_rejected(slicing, width, msg):
    cfg = ViTConfig(embed_dim=192, num_heads=3, slicing=slicing)
    with pytest.raises(ConfigError, match=msg):
        resolve(cfg, Variant(width))


def test_config_validation_messages():
    with pytest.raises(ConfigError, match='"slicing" must be one of .*did you mean "heads"'):
        ViTConfig(slicing="head")
    with pytest.raises(ConfigError, match="divisible"):
        ViTConfig(embed_dim=100, num_heads=3)
    with pytest.raises(ConfigError, match='unknown model config key "embed_dims".*did you mean "embed_dim"'):
        ViTConfig.from_dict({"embed_dims": 3})
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        resolve(ViTConfig(), Variant(1.0, 1.0, 100))
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_floats("a,b", "--widths")


def test_grid_deduplicates_and_orders_largest_first():
    cfg = ViTConfig(embed_dim=192, num_heads=3)
    grid = VariantGrid(widths=(0.3, 0.34, 1.0), keep_rates=(1.0, 0.5), resolutions=(224, 160))
    ids = [s.id for s in grid.subnets(cfg)]
    assert len(ids) == len(set(ids)) == 8  # 0.3 and 0.34 both give one head
    assert ids[0] == "w192_k100_r224" and ids[-1] == "w64_k50_r160"


def test_config_roundtrip():
    cfg = ViTConfig(embed_dim=64, num_heads=4, depth=4, extra_resolutions=(160,), slicing="ratio")
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    assert block_keeps(cfg, resolve(cfg, Variant(1.0, 1.0))) == (None,) * 4
