"""Core ML W8A8 (`int8`) made on any OS: calibrate in PyTorch with `coremltools.optimize.torch`,
then convert the calibrated model.

`coremltools.optimize.coreml.linear_quantize_activations` collects activation ranges by running
the ML Program, which only macOS can do. `coremltools.optimize.torch.LinearQuantizer` collects
them in PyTorch instead: its observers watch the variant's own forward pass over the calibration
set (no training step: fake quantization stays off while they watch), ``finalize`` turns them
into quantize/dequantize pairs and per-channel int8 weights, and `ct.convert` maps those onto the
ML Program's ``quantize``/``dequantize`` ops and ``constexpr_affine_dequantize`` weights (iOS17+).

The finalized PyTorch module is the exact quantization the artifact holds, so it is what the
artifact's accuracy is measured on off macOS; `check_program` proves the two hold the same
activation scales and weights.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence

import numpy as np
import torch
from torch import fx, nn
from torch.utils._pytree import tree_map

NEVER = 10**9  # a LinearQuantizer milestone that is never reached
BATCH = 32
# `SENSITIVE_OPS` that name modules: kept in float by leaving them out of the quantizer config.
FLOAT_MODULES = {"first": "patch_embed.proj", "last": "head"}
# The ML Program quantize/dequantize ops need iOS17 / macOS14 (coremltools' opset iOS17).
MIN_TARGETS = {"iOS": 17, "macOS": 14}


def target_for(deployment_target: str) -> str:
    """The bundle's Core ML deployment target, if W8A8 can run there.

    Raises:
        ValueError: an earlier OS, with what to change.
    """
    family = deployment_target.rstrip("0123456789")
    version = int(deployment_target[len(family):])
    if version < MIN_TARGETS[family]:
        raise ValueError(f"W8A8 int8 needs {family}{MIN_TARGETS[family]} or later (its quantize/"
                         f"dequantize ops), but the bundle targets {deployment_target}: raise "
                         "--coreml-target or leave int8 out (int8-weights runs on iOS16)")
    return deployment_target


def calibrated_module(module: nn.Module, example: np.ndarray, calibration: np.ndarray,
                      float_ops: Sequence[str] = ()) -> fx.GraphModule:
    """The variant with int8 activations from ``calibration`` (min/max over every sample) and
    per-channel symmetric int8 weights, as fake-quantized PyTorch; ``module`` is not changed.

    Args:
        module: the variant's static module.
        example: one input (1, C, H, W), to trace with.
        calibration: the variant's own calibration inputs (N, C, H, W).
        float_ops: `SENSITIVE_OPS` to keep in float: ``first``/``last`` leave the patch
            embedding / head unquantized; ``softmax``/``layernorm``/``gelu`` keep those outputs
            out of the int8 grid.
    """
    from coremltools.optimize.torch.quantization import (
        LinearQuantizer,
        LinearQuantizerConfig,
        ModuleLinearQuantizerConfig,
    )

    # affine: each activation's zero point follows its own min/max. The symmetric scheme puts a
    # signed tensor's zero point at 128, so a skewed one (GELU outputs, LayerNorm outputs with
    # shifted channels) wastes part of the grid: demo worst drop 1.39 -> 0.56 p.p. (w16_k50_r24).
    per_module = ModuleLinearQuantizerConfig(
        quantization_scheme="affine", weight_per_channel=True, activation_observer="min_max",
        weight_observer="min_max", milestones=[0, NEVER, NEVER, 0])
    config = LinearQuantizerConfig(
        global_config=per_module,
        module_name_configs={FLOAT_MODULES[k]: None for k in float_ops if k in FLOAT_MODULES})
    quantizer = LinearQuantizer(copy.deepcopy(module).eval(), config)
    prepared = quantizer.prepare(example_inputs=(torch.from_numpy(example),), inplace=True)
    quantizer.step()  # milestone 0: observers on, fake quantization off
    with torch.no_grad():
        for start in range(0, len(calibration), BATCH):
            prepared(torch.from_numpy(calibration[start:start + BATCH]))
    finalized = quantizer.finalize(inplace=True).eval()
    _keep_float(finalized, set(float_ops))
    return finalized


def _keep_float(gm: fx.GraphModule, kinds: set[str]) -> None:
    """Bypass the quantize/dequantize pairs on the outputs of softmax, LayerNorm and GELU."""
    def kind(node: fx.Node) -> str | None:
        if node.op == "call_method" and node.target == "softmax":
            return "softmax"
        if node.op == "call_function" and node.target in (torch.softmax, torch.nn.functional.softmax):
            return "softmax"
        if node.op == "call_function" and node.target is torch.nn.functional.gelu:
            return "gelu"
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.LayerNorm):
            return "layernorm"
        return None

    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.quantize_per_tensor:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or kind(source) not in kinds:
            continue
        for user in list(node.users):
            if user.op == "call_method" and user.target == "dequantize":
                user.replace_all_uses_with(source)
    gm.graph.eliminate_dead_code()
    gm.recompile()


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and keeps every Python int read from a tensor's shape."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.ints: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, int) and n.op == "call_function" and n.target is operator.getitem:
            self.ints[n] = out
        return out


def _specialise_shapes(gm: fx.GraphModule, example: np.ndarray) -> None:
    """Replace ``B, N, C = x.shape`` reads with the numbers the example gives.

    The artifact's shapes are static anyway; without this TorchScript records each read as a
    size op, and coremltools 9 fails to fold those under NumPy 2 (`int()` of a 1-element array).
    """
    recorder = _ShapeRecorder(gm)
    with torch.no_grad():
        recorder.run(torch.from_numpy(example))
    for node, value in recorder.ints.items():
        for user in list(node.users):
            user.args = tree_map(lambda a, n=node, v=value: v if a is n else a, user.args)
            user.kwargs = tree_map(lambda a, n=node, v=value: v if a is n else a, user.kwargs)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def activation_scales(gm: fx.GraphModule) -> list[float]:
    """The scale of every activation quantize in the calibrated module (constants such as the
    position embedding are left out: the converter folds their quantize/dequantize away)."""
    scales = []
    for node in gm.graph.nodes:
        if (node.op == "call_function" and node.target is torch.quantize_per_tensor
                and not (isinstance(node.args[0], fx.Node) and node.args[0].op == "get_attr")):
            scale = node.args[1]
            if isinstance(scale, fx.Node):
                scale = getattr(gm, str(scale.target))
            scales.append(float(scale))
    return scales


def quantized_weights(gm: fx.GraphModule) -> list[np.ndarray]:
    """The int8 values of every weight the calibrated module quantizes."""
    out = []
    for mod in gm.modules():
        if getattr(mod, "weight_dtype", None) != torch.qint8:  # torch.ao reference Linear / Conv
            continue
        if mod.weight_qscheme in (torch.per_channel_affine, torch.per_channel_symmetric):
            q = torch.quantize_per_channel(mod.weight.detach(), mod.weight_scale, mod.weight_zero_point,
                                           mod.weight_axis_int, torch.qint8)
        else:
            q = torch.quantize_per_tensor(mod.weight.detach(), float(mod.weight_scale),
                                          int(mod.weight_zero_point), torch.qint8)
        out.append(q.int_repr().numpy())
    return out


def convert(gm: fx.GraphModule, example: np.ndarray, input_name: str, output_name: str,
            target: str = "iOS17"):
    """The calibrated module as an ML Program (traced: ``torch.export`` cannot trace quantized
    tensors, and TorchScript is the route coremltools documents for `LinearQuantizer`)."""
    import coremltools as ct

    x = torch.from_numpy(example)
    static = copy.deepcopy(gm)
    _specialise_shapes(static, example)
    with torch.no_grad():
        traced = torch.jit.trace(static, x)
    return ct.convert(traced, convert_to="mlprogram",
                      inputs=[ct.TensorType(name=input_name, shape=tuple(x.shape), dtype=np.float32)],
                      outputs=[ct.TensorType(name=output_name, dtype=np.float32)],
                      minimum_deployment_target=getattr(ct.target, target))


def check_program(consts: dict[str, np.ndarray], ops: dict[str, int], scales: Sequence[float],
                  weights: Sequence[np.ndarray]) -> list[str]:
    """What differs between a converted W8A8 program and its calibrated module: every activation
    scale must be a scale of the program (within its float16 rounding) and every int8 weight one
    of its int8 consts, value for value. ``consts``/``ops`` as `program_info` reads them."""
    problems = []
    if ops.get("quantize", 0) == 0 or ops.get("constexpr_affine_dequantize", 0) == 0:
        problems.append(f"no int8 activations or weights in the program (ops {sorted(ops)})")
    program_scales = np.array(sorted({float(v) for v in consts.values()
                                      if v.dtype.kind == "f" and v.ndim == 0 and v > 0}))
    missing = [s for s in scales if program_scales.size == 0
               or np.min(np.abs(program_scales - s)) > 1e-3 * s]
    if missing:
        problems.append(f"{len(missing)} of {len(scales)} activation scales not in the program "
                        f"(first {missing[0]:.6g})")
    int8: dict[tuple[int, ...], list[np.ndarray]] = {}
    for v in consts.values():
        if v.dtype == np.int8:
            int8.setdefault(v.shape, []).append(v)
    unmatched = sum(not any(np.array_equal(w, v) for v in int8.get(w.shape, [])) for w in weights)
    if unmatched:
        problems.append(f"{unmatched} of {len(weights)} int8 weights of the module not in the program")
    return problems
