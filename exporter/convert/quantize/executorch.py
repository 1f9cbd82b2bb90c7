"""ExecuTorch precisions, made from the variant's static module (ExecuTorch quantizes before
lowering, not from the FP32 `.pte`) and lowered to XNNPACK like the FP32 program:

- fp16: the module in half precision behind float32 input/output; XNNPACK runs fp16 kernels
  where the CPU has them and upcasts where it does not.
- int8: pt2e static quantization with `XNNPACKQuantizer` (symmetric int8, per-channel weights,
  per-tensor activations) calibrated on the variant's own inputs; XNNPACK fuses each
  dequantize -> op -> quantize group into an int8 kernel.
- int8-dynamic: the same quantizer in dynamic mode: int8 weights, activation ranges computed per
  run for the linear layers (no calibration).

`--calibration-method minmax` observes activations with min/max; ``entropy`` and
``percentile`` map to pt2e's histogram observer (it picks the range by minimising the
quantization error over the histogram, the role both play elsewhere)."""

from __future__ import annotations

import copy
import dataclasses
import functools

import numpy as np
import torch

from exporter.convert.formats.base import quiet
from exporter.convert.formats.executorch import FP32Wrapper, export_program, lower
from exporter.convert.formats.executorch_graph import XnnLayerNorm, for_xnnpack
from exporter.convert.quantize.registry import Precision, QuantJob, register

# Module names a retry keeps in float (StaticViT's names).
_SENSITIVE_MODULES = {"first": ("patch_embed",), "last": ("head", "head_dist")}


def _metadata(job: QuantJob, precision: str) -> dict[str, str]:
    return {**job.metadata, "slimvit.precision": precision}


def _xnnpack_only(job: QuantJob, precision: str) -> None:
    # The Core ML backend (ExecuTorchFormat(backend="coreml")) is offered in fp32 only.
    backend = getattr(job.converter, "backend", "xnnpack")
    if backend != "xnnpack":
        raise ValueError(f"{precision} is made for the XNNPACK backend only, not {backend}")


def _lower(module: torch.nn.Module, job: QuantJob, precision: str) -> None:
    job.out.write_bytes(lower(export_program(module, job.example), _metadata(job, precision)))


def quantize_fp16(job: QuantJob) -> None:
    _xnnpack_only(job, "fp16")
    module = FP32Wrapper(copy.deepcopy(job.module).half()).eval()
    _lower(module, job, "fp16")


def _quantizer(job: QuantJob, dynamic: bool):
    """XNNPACKQuantizer for the job. A retry (``float_ops`` set) quantizes only the linear and
    convolution layers, so the residual adds, muls and concatenations stay float too, and keeps
    the first/last layers float when asked (XNNPACKQuantizer leaves LayerNorm, softmax and GELU
    float in every case)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    if not dynamic and job.method == "minmax":
        from torchao.quantization.pt2e import MinMaxObserver

        spec = dataclasses.replace(config.input_activation,
                                   observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    # LayerNorm (written as linear/sub/mul for XNNPACK) stays float: an int8 mean and variance
    # would lose most of the normalization's precision.
    quantizer = XNNPACKQuantizer().set_module_type(XnnLayerNorm, None)
    if not job.float_ops:
        quantizer.set_global(config)
    else:
        for op in (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default):
            quantizer.set_operator_type(op, config)
        skip = tuple(n for kind in job.float_ops for n in _SENSITIVE_MODULES.get(kind, ()))
        quantizer.set_filter_function(lambda node: not _in_modules(node, skip))
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer

    return ComposableQuantizer([quantizer, _slice_quantizer()()])


@functools.cache
def _slice_quantizer() -> type:
    """A pt2e quantizer (class built on first use: torchao is part of the optional extra) that
    gives every ``aten.slice`` of a quantized tensor its input's quantization parameters.

    XNNPACKQuantizer does this for ``slice_copy`` only, but ``torch.export`` writes a slice
    (the token pruning's ``x[:, n_prefix:]``) as ``aten.slice.Tensor``. Left unannotated, the
    slice reads an int8 tensor and writes a float one inside the XNNPACK partition, and
    XNNPACK refuses the program at load time ("Failed to create static slice node ...
    invalid_parameter": a static slice must keep its input's datatype). Sharing the qparams
    makes it an int8 -> int8 slice; the dequantize moves after it, in front of the Gather."""
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        Quantizer,
        SharedQuantizationSpec,
    )
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        for node in model.graph.nodes:
            if node.op != "call_function" or node.target != torch.ops.aten.slice.Tensor:
                continue
            source, done = node.args[0], node.meta.get(Q_ANNOTATION_KEY)
            if not isinstance(source, torch.fx.Node) or (done is not None and done._annotated):
                continue
            upstream = source.meta.get(Q_ANNOTATION_KEY)
            if upstream is None or upstream.output_qspec is None:
                continue  # a float tensor: nothing to keep consistent
            shared = SharedQuantizationSpec(source)
            node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                input_qspec_map={source: shared}, output_qspec=shared, _annotated=True)
        return model

    return type("SliceSharesQParams", (Quantizer,),
                {"annotate": annotate, "validate": lambda self, model: None})


def _in_modules(node, names: tuple[str, ...]) -> bool:
    """Whether an exported graph node comes from one of the top-level submodules ``names``."""
    for path, _ in (node.meta.get("nn_module_stack") or {}).values():
        top = path.split(".")[0] if path else ""
        if top in names:
            return True
    return False


def _pt2e(job: QuantJob, precision: str, dynamic: bool) -> None:
    _xnnpack_only(job, precision)
    if not dynamic and job.calibration is None:
        raise ValueError("static int8 needs calibration inputs")
    x = torch.from_numpy(job.example)
    with quiet():  # torchao's import reports optional CUDA kernels it cannot load
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        graph = torch.export.export(for_xnnpack(job.module).eval(), (x,)).module()
        prepared = prepare_pt2e(graph, _quantizer(job, dynamic))
        samples = job.calibration if not dynamic else job.example
        with torch.no_grad():
            for i in range(len(samples)):  # the program takes batch 1
                prepared(torch.from_numpy(np.ascontiguousarray(samples[i:i + 1])))
        converted = convert_pt2e(prepared)
    _lower(converted, job, precision)


def quantize_int8(job: QuantJob) -> None:
    _pt2e(job, "int8", dynamic=False)


def quantize_int8_dynamic(job: QuantJob) -> None:
    _pt2e(job, "int8-dynamic", dynamic=True)


FP16 = register(Precision("fp16", "executorch", "float16 weights and XNNPACK fp16 math, float32 "
                          "input/output", calibrated=False, min_agreement=0.97, quantize=quantize_fp16))
INT8 = register(Precision("int8", "executorch", "pt2e static int8 (XNNPACKQuantizer: per-channel "
                          "symmetric weights, per-tensor activations calibrated on the variant's "
                          "inputs) for linear/conv/add/mul/cat; LayerNorm, softmax, GELU in float; "
                          "a retry quantizes only linear/conv; float32 input/output", calibrated=True,
                          min_agreement=0.8, quantize=quantize_int8))
INT8_DYNAMIC = register(Precision("int8-dynamic", "executorch", "pt2e dynamic int8: per-channel int8 "
                                  "weights of the linear layers, activations quantized per run",
                                  calibrated=False, min_agreement=0.8, quantize=quantize_int8_dynamic))
