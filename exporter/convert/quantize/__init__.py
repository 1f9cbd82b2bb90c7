"""Quantization: the precision registry and the per-variant precisions loop.

checkpoint -> variant -> FP32 artifact (validated) -> each precision, calibrated on the
variant's own inputs, measured against the FP32 PyTorch variant -> manifest."""

from exporter.convert.quantize.pipeline import (
    DEFAULT_MAX_DROP,
    EvalData,
    QuantizeOptions,
    VariantQuant,
    export_precisions,
    for_variant,
    quantize_options,
)
from exporter.convert.quantize.registry import (
    CALIBRATION_METHODS,
    FP32,
    PRECISIONS,
    SENSITIVE_OPS,
    Precision,
    QuantJob,
    check_precisions,
    get_precision,
    precision_names,
)

__all__ = ["CALIBRATION_METHODS", "DEFAULT_MAX_DROP", "FP32", "PRECISIONS", "SENSITIVE_OPS",
           "EvalData", "Precision", "QuantJob", "QuantizeOptions", "check_precisions",
           "VariantQuant", "export_precisions", "for_variant", "get_precision", "precision_names", "quantize_options"]
