"""TFLite precisions with ai-edge-quantizer, starting from the validated FP32 `.tflite`:
fp16 (float16 weights, float math), int8-dynamic (dynamic-range: int8 weights, activations
quantized at run time by the kernels), int8 (static int8 on the weighted layers, activation
ranges calibrated on the variant's own inputs, everything else float: one XNNPACK partition),
int8-xnnpack (int8 on every op the XNNPACK delegate runs in int8) and int8-full (full-integer,
what integer-only accelerators need; on CPUs XNNPACK leaves ~120 pieces of it to the slow
reference kernels). Float32 input/output everywhere, so apps feed the same tensors."""

from __future__ import annotations

from exporter.convert.formats.base import quiet
from exporter.convert.formats.tflite import finish_flatbuffer
from exporter.convert.quantize.registry import Precision, QuantJob, register
from exporter.convert.quantize.tflite_share import share_weights

SIGNATURE = "serving_default"
# Ops kept in float on a retry, per sensitive kind. litert-torch lowers LayerNorm to
# MEAN/SQUARED_DIFFERENCE/RSQRT/MUL/ADD; keeping its statistics ops in float is what matters.
_SENSITIVE = {"softmax": ("SOFTMAX",), "gelu": ("GELU",),
              "layernorm": ("MEAN", "SQUARED_DIFFERENCE", "RSQRT"), "first": ("CONV_2D",)}


def _quantizer(job: QuantJob):
    from ai_edge_quantizer import quantizer

    return quantizer.Quantizer(job.fp32_path.read_bytes())


def _keep_float(qt, job: QuantJob) -> None:
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    ops = [op for kind in job.float_ops for op in _SENSITIVE.get(kind, ())]
    for op in ops:
        qt.update_quantization_recipe(regex=".*", operation_name=op,
                                      algorithm_key=AlgorithmName.NO_QUANTIZE)
    if "last" in job.float_ops:  # the head writes the output tensor, named by the format
        qt.update_quantization_recipe(regex="logits", operation_name="FULLY_CONNECTED",
                                      algorithm_key=AlgorithmName.NO_QUANTIZE)


def _write(qt, job: QuantJob, precision: str, calibration=None, shared: bool = False) -> None:

    result = qt.quantize(calibration, enable_progress_report=False)
    data = bytes(result.quantized_model)
    if shared:  # shared-scale int8: every width's int8 weights a slice of one copy
        if job.reference is None:
            raise ValueError("shared-scale int8 needs the slimmable model (export through export_bundle)")
        data = share_weights(data, job.fp32_path.read_bytes(), job.reference.model, job.reference.s)
    data = finish_flatbuffer(data, {**job.metadata, "slimvit.precision": precision})
    job.out.write_bytes(data)


def quantize_fp16(job: QuantJob) -> None:
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    with quiet():
        qt = _quantizer(job)
        for op in ("FULLY_CONNECTED", "CONV_2D"):  # the weighted ops FLOAT_CASTING supports
            qt.update_quantization_recipe(
                regex=".*", operation_name=op, algorithm_key=AlgorithmName.FLOAT_CASTING,
                op_config=qtyping.OpQuantizationConfig(
                    weight_tensor_config=qtyping.TensorQuantizationConfig(
                        num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
                    compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True))
        _write(qt, job, "fp16")


def quantize_int8_dynamic(job: QuantJob, shared: bool = False) -> None:
    from ai_edge_quantizer import recipe

    with quiet():
        qt = _quantizer(job)
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        _keep_float(qt, job)
        _write(qt, job, "int8-dynamic-shared" if shared else "int8-dynamic", shared=shared)


# Ops whose int8 form the XNNPACK delegate (ai-edge-litert 2.3) leaves to the interpreter, found
# by quantizing one op type at a time and counting delegate partitions. A full-integer ViT is
# cut into ~120 partitions at DeiT-Ti shape by them; int8-xnnpack keeps them in float.
NOT_DELEGATED_INT8 = ("ADD", "SUB", "SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX", "GELU", "BATCH_MATMUL")


# The weighted layers: ~all of a ViT's MACs. Quantizing only their inputs keeps every other op
# in float, so nothing leaves the XNNPACK partition and no op pays a quantize/dequantize pass for
# no int8 arithmetic (DeiT-Ti shape, 1 thread, this host: 3.1x FP32 vs 2.7x for int8-xnnpack).
WEIGHTED_LAYERS = ("FULLY_CONNECTED", "CONV_2D")


def _layers_recipe() -> list[dict]:
    from ai_edge_quantizer import recipe

    (base,) = recipe.static_wi8_ai8()  # per-channel symmetric weights, per-tensor activations
    return [{**base, "operation": op} for op in WEIGHTED_LAYERS]


def _static(job: QuantJob, precision: str, float_ops: tuple[str, ...] = (),
            layers_only: bool = False) -> None:
    from ai_edge_quantizer import recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    if job.calibration is None:
        raise ValueError("static int8 needs calibration inputs")
    x = job.calibration if job.layout == "NCHW" else job.calibration.transpose(0, 2, 3, 1)
    with quiet():
        qt = _quantizer(job)
        qt.load_quantization_recipe(_layers_recipe() if layers_only else recipe.static_wi8_ai8())
        # float32 I/O: apps feed and read the same tensors
        for op in ("INPUT", "OUTPUT", *float_ops):
            qt.update_quantization_recipe(regex=".*", operation_name=op,
                                          algorithm_key=AlgorithmName.NO_QUANTIZE)
        _keep_float(qt, job)
        samples = [{"pixel_values": x[i:i + 1].copy()} for i in range(len(x))]
        _write(qt, job, precision, _global_ranges(qt, job, samples))


def _global_ranges(qt, job: QuantJob, samples: list[dict]) -> dict:
    """Each tensor's min/max over every calibration sample.

    ``Quantizer.calibrate`` merges the per-sample ranges of a batch-1 model by a moving average
    (factor 0.95), so the final range is about that of the last ~20 samples: narrower than the
    data, and the clipped outliers cost the demo's 1-head variants 2.2-5.6 p.p. top-1 (int8).
    The same calibrator with a min/max merge gives the range of the whole set (worst demo drop
    of int8 0.84 p.p., see docs/quantization.md).
    """
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    recipes = recipe_manager.RecipeManager()
    recipes.load_quantization_recipe(qt.get_quantization_recipe())
    cal = calibrator.Calibrator(job.fp32_path.read_bytes(), num_threads=1,
                                qsv_update_func=qsv_utils.min_max_update)
    cal.calibrate({SIGNATURE: samples}, recipes)
    return cal.get_model_qsvs()


def quantize_int8(job: QuantJob) -> None:
    _static(job, "int8", layers_only=True)


def quantize_int8_full(job: QuantJob) -> None:
    _static(job, "int8-full")


# Ops XNNPACK could run in int8 but that int8-xnnpack keeps in float for accuracy: LayerNorm's
# MEAN reads the residual stream, whose outlier channels a per-tensor int8 scale cannot hold
# (demo w16_k50_r32: int8 MEAN 3.34 p.p. drop, float MEAN -0.84 p.p.; docs/quantization.md).
FLOAT_FOR_ACCURACY = ("MEAN",)


def quantize_int8_xnnpack(job: QuantJob) -> None:
    _static(job, "int8-xnnpack", NOT_DELEGATED_INT8 + FLOAT_FOR_ACCURACY)


FP16 = register(Precision("fp16", "tflite", "float16 weights of FULLY_CONNECTED/CONV_2D, float32 math "
                          "(GPU delegates run fp16)", calibrated=False, min_agreement=0.97,
                          quantize=quantize_fp16))
INT8_DYNAMIC = register(Precision("int8-dynamic", "tflite", "dynamic range: per-channel int8 weights, "
                                  "activations quantized per run", calibrated=False,
                                  min_agreement=0.8, quantize=quantize_int8_dynamic, uses_target=True))
INT8 = register(Precision("int8", "tflite", "static int8 FULLY_CONNECTED/CONV_2D (per-channel weights, "
                          "calibrated per-tensor activations), every other op float: one XNNPACK "
                          "partition; float32 input/output", calibrated=True,
                          min_agreement=0.8, quantize=quantize_int8, uses_target=True))
INT8_FULL = register(Precision("int8-full", "tflite", "full-integer static int8 (ai-edge-quantizer "
                               "static_wi8_ai8, min/max ranges) for integer-only accelerators; slower "
                               "than fp32 on CPU (XNNPACK runs int8 softmax/GELU/add/batch-matmul "
                               "outside its partition)", calibrated=True,
                               min_agreement=0.8, quantize=quantize_int8_full))
INT8_XNNPACK = register(Precision("int8-xnnpack", "tflite", "static int8 for the ops XNNPACK runs in "
                                  "int8 (FULLY_CONNECTED, CONV_2D, MEAN, MUL, data movement); "
                                  "residual adds, LayerNorm statistics, softmax, GELU and attention "
                                  "matmuls in float, so the graph stays one XNNPACK partition; "
                                  "min/max ranges, float32 input/output", calibrated=True,
                                  min_agreement=0.8, quantize=quantize_int8_xnnpack, uses_target=True))
INT8_DYNAMIC_SHARED = register(Precision("int8-dynamic-shared", "tflite", "int8-dynamic with shared-scale "
                                         "weights: the slimmable weights (LayerNorm gammas folded as the "
                                         "converter folds them) quantized once per output channel, each "
                                         "width's int8 weights and scales a slice of them",
                                         calibrated=False, min_agreement=0.8,
                                         quantize=lambda job: quantize_int8_dynamic(job, shared=True),
                                         uses_target=True))
