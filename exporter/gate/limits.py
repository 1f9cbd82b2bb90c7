"""Every bound slimvit puts on what comes from outside, stated once.

The model bounds come from what a phone can run: a ViT past these sizes does not fit the memory
or the latency budget of any device slimvit targets, and refusing it before allocation keeps a
hostile or mistyped config from asking for gigabytes. The file caps are far above anything
slimvit writes, and low enough that reading one never strains memory.
"""

from __future__ import annotations

# ---------------------------------------------------------------- model (checkpoint metadata, configs)
MAX_IMG_SIZE = 1024  # px; phones run 96..518
MAX_PATCH_SIZE = 64
MAX_IN_CHANS = 16
MAX_CLASSES = 100_000  # ImageNet-21k has 21,843
MAX_EMBED_DIM = 4096  # ViT-g is 1408; ViT-22B's 6144 does not run on a phone
MAX_DEPTH = 64
MAX_HEADS = 128
MAX_MLP_RATIO = 16.0
MAX_EXTRA_RESOLUTIONS = 16
MAX_TOKENS = (MAX_IMG_SIZE // 8) ** 2  # patch tokens at the largest size with 8 px patches
MAX_PARAMS = 2_000_000_000  # what a model config may describe before anything is allocated
MAX_LABEL_CHARS = 256
LN_EPS_RANGE = (1e-12, 1e-1)

# ---------------------------------------------------------------- training and search
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both take 32 bits portably
LR_RANGE = (0.0, 10.0)  # exclusive low end
MAX_LIMIT = 10_000_000  # --limit / train_limit samples

# ---------------------------------------------------------------- bundles and signing
MAX_BUNDLE_VERSION = 2**53 - 1  # the largest integer JavaScript's JSON.parse reads exactly
MAX_EXPIRY_DAYS = 3660  # ten years
MAX_THREADS = 1024
MAX_RUNS = 1_000_000
MAX_FPS = 10_000.0

# ---------------------------------------------------------------- files read from outside
MAX_KEY_BYTES = 64 << 10
MAX_MANIFEST_BYTES = 4 << 20
MAX_JSON_BYTES = 16 << 20  # device reports, policy files, vectors, training configs, traces
MAX_TEXT_BYTES = 16 << 20  # tool outputs pasted as reports
MAX_TRACE_BYTES = 64 << 20
MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 30  # an integer longer than this in JSON is never a value slimvit reads
MAX_CSV_FIELD = 4096  # characters in one trace field
MAX_SAFETENSORS_HEADER = 16 << 20
MAX_NPZ_MEMBER_BYTES = 2 << 30  # one calibration array, uncompressed
MAX_NPZ_RATIO = 1000  # uncompressed / compressed: more is a zip bomb
MAX_IMAGE_PIXELS = 64_000_000  # Pillow's decompression-bomb guard (a 8000 x 8000 photo)

# ---------------------------------------------------------------- CLI numbers, by parameter name
# (low, high, low_inclusive). Every other int flag is a count in [0, MAX_CLI_INT]; every float
# flag must be finite. `exporter.gate.cli` applies this table to every command.
MAX_CLI_INT = 2**31 - 1
CLI_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "epochs": (1, MAX_EPOCHS, True),
    "search_epochs": (1, MAX_EPOCHS, True),
    "finetune_epochs": (0, MAX_EPOCHS, True),
    "batch_size": (1, MAX_BATCH, True),
    "seed": (0, MAX_SEED, True),
    "lr": (LR_RANGE[0], LR_RANGE[1], False),
    "num_heads": (1, MAX_HEADS, True),
    "limit": (0, MAX_LIMIT, True),
    "threads": (0, MAX_THREADS, True),
    "runs": (1, MAX_RUNS, True),
    "warmup": (0, MAX_RUNS, True),
    "calibration_samples": (1, 1_000_000, True),
    "battery": (0, 100, True),
    "fps": (0, MAX_FPS, False),
    "max_drop": (0, 100, True),
    "budget_macs": (0, 1, False),
    "bundle_version": (0, MAX_BUNDLE_VERSION, True),
    "min_bundle_version": (0, MAX_BUNDLE_VERSION, True),
}
