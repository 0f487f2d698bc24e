"""Export one trained run to ONNX: the frozen model with the task's gated modules and head in one graph.

The graph is traced with TorchScript (``torch.onnx.export(..., dynamo=False)``): tracing runs the model's real
forward, so the forward hooks and per-call context variables that put the task's modules into the frozen
model are followed like any Python code. Three things need care:

- the prefix reparameterisation MLP is ejected first (its output is a constant at inference);
- the modules' in-place inference shortcuts (``addmm_`` into a projection's output) are not converted
  faithfully, so tracing runs with grad mode on, where the modules take their out-of-place path;
- Python branches on tensor values become constants of the trace. The injector takes a faster path when a
  batch has no padding, so the trace uses a padded batch: the padded path is correct for every batch.

The export is accepted only when ONNX Runtime gives the same logits as PyTorch on the run's test inputs (max
absolute difference at most ``tolerance``, 1e-4 by default); otherwise nothing is written. ``quantize="int8"``
adds ``model.int8.onnx`` (ONNX Runtime dynamic quantisation) and reports its change in the run's metric and
its speed against fp32.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unipelt.checkpoint import atomic_directory, write_json
from unipelt.devices import Placement
from unipelt.errors import UniPELTError
from unipelt.inference.onnx_runtime import EXPORT_INFO, OnnxRun, run_session, session
from unipelt.inference.runs import Run
from unipelt.inference.served_tasks import default_name, pair_task, run_score
from unipelt.running.loop import chunks, model_device

OPSET = 17


class _Logits(torch.nn.Module):
    """The run's model as a function of named input tensors to logits, which is what the graph exposes."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors))).logits


def exportable(run: Any) -> None:
    """Refuse, with the reason, what this exporter cannot turn into one graph."""
    if not run.kind.onnx_export:
        raise UniPELTError(
            f"{run.folder} is a {run.kind.name} run; ONNX export does not take it: {run.kind.onnx_reason}"
        )
    model, _ = run.load()
    # Modules merged into the base weights (an optimized run loaded alone) need nothing special: the graph
    # is traced from the merged model, which is exactly the deployed form, and parity is checked as always.
    tasks = getattr(model, "tasks", None)
    if tasks is not None and len(tasks) != 1:
        raise UniPELTError(f"{run.folder} holds {len(tasks)} tasks; an ONNX export holds one task")


def _rms_norm(g: Any, x: Any, normalized_shape: Any, weight: Any, eps: Any) -> Any:
    """``aten::rms_norm`` as ONNX operators: opset 17 has no RMSNormalization (the gates of pre-norm models,
    such as ViT's, normalise their input with it)."""
    from torch.onnx import symbolic_helper

    if symbolic_helper._is_packed_list(normalized_shape):  # sizes traced from the input's shape
        count = len(symbolic_helper._unpack_list(normalized_shape))
    else:
        count = len(symbolic_helper._get_const(normalized_shape, "is", "normalized_shape"))
    eps = None if symbolic_helper._is_none(eps) else symbolic_helper._get_const(eps, "f", "eps")
    eps = torch.finfo(torch.float32).eps if eps is None else eps
    squares = g.op("Mul", x, x)
    mean = g.op("ReduceMean", squares, axes_i=list(range(-count, 0)), keepdims_i=1)
    scale = g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(eps, dtype=torch.float32))))
    out = g.op("Div", x, scale)
    return out if symbolic_helper._is_none(weight) else g.op("Mul", out, weight)


def _trace(run: Any, path: Path) -> tuple[str, ...]:
    import warnings

    torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm, OPSET)
    model, preprocessor = run.load()
    if hasattr(model, "eject_prefix_mlp"):
        model.eject_prefix_mlp()
    sample = run.kind.trace_inputs(preprocessor, pair_task(run.config), run.config.max_length)
    sample = {k: v.to(model_device(model)) for k, v in sample.items()}
    names = tuple(sample)
    try:
        # Grad mode ON while tracing: under no_grad the modules add into the frozen projections' outputs in
        # place (addmm_), which the tracer records but the ONNX converter does not carry through the view.
        with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
            warnings.simplefilter(
                "ignore"
            )  # tracer warnings about constant branches: handled by the padded sample
            torch.onnx.export(
                _Logits(model, names).eval(),
                tuple(sample.values()),
                str(path),
                input_names=list(names),
                output_names=["logits"],
                dynamic_axes=run.kind.onnx_axes(names),
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as error:  # noqa: BLE001 - the tracer and the ONNX converter raise many types
        arch = type(getattr(model, "base_model", model)).__name__
        raise UniPELTError(
            f"cannot export {run.folder} ({arch}, method {run.config.method}) to ONNX: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    return names


def batches(run: Any, examples: list[Any], batch_size: int = 32) -> list[Any]:
    """Collated batches of the run's inputs, as ``predict`` makes them for its kind (texts, words aligned to
    sub-tokens, or pixels)."""
    items, collate = run.kind.prediction_batches(examples, run.preprocessor, run.max_length)
    return list(chunks(items, collate, batch_size))


def torch_logits(run: Any, examples: list[Any], batch_size: int = 32) -> list[np.ndarray]:
    """The run's logits per batch of :func:`batches` (per token for a tagging run)."""
    return list(run.forward(batches(run, examples, batch_size)))


def onnx_logits(sess: Any, run: Any, examples: list[Any], batch_size: int = 32) -> list[np.ndarray]:
    return [run_session(sess, b) for b in batches(run, examples, batch_size)]


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def single_latency(sess: Any, run: Any, length: int = 128, repeats: int = 20) -> float:
    """Median seconds of one input's forward (1 x ``length`` tokens; one image), after two warm-up calls."""
    batch = run.kind.timing_inputs([i.name for i in sess.get_inputs()], run.preprocessor, length)
    for _ in range(2):
        sess.run(None, batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def export_run(
    folder: str | Path,
    out: str | Path,
    quantize: str | None = None,
    data: str | None = None,
    tolerance: float = 1e-4,
    max_examples: int | None = None,
    threads: int | None = None,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Write ``out`` (model.onnx, tokenizer/, labels.json, export.json) after checking parity; return the report.

    The run's model is traced and checked where ``placement`` puts it (default: the CPU); the graph itself is
    float32 and device-free, and ONNX Runtime runs it on the CPU."""
    if quantize not in (None, "int8"):
        raise UniPELTError(f"--quantize takes int8, not {quantize!r}")
    if placement is not None and placement.dtype not in (None, torch.float32):
        raise UniPELTError("an ONNX export is float32: leave out --dtype (or give fp32)")
    run = Run(folder, placement)
    exportable(run)
    test = run.data(path=data)
    examples = test.examples[:max_examples] if max_examples else test.examples
    scored = dataclasses.replace(test, examples=examples) if run.kind.labelled(examples) else None
    report: dict[str, Any] = {"run": str(run.folder), "opset": OPSET, "examples": len(examples)}

    def write(tmp: Path) -> None:
        start = time.perf_counter()
        names = _trace(run, tmp / "model.onnx")
        report["export_seconds"] = round(time.perf_counter() - start, 2)
        report["inputs"] = list(names)
        fp32 = session(tmp / "model.onnx", threads)
        report.update(_parity(run, fp32, examples, scored, tolerance))
        if quantize == "int8":
            report["int8"] = _quantize(tmp, run, examples, scored, fp32, threads)
        model, tokenizer = run.load()
        tokenizer.save_pretrained(tmp / "tokenizer")
        shutil.copy(run.folder / "labels.json", tmp / "labels.json")
        write_json(tmp / EXPORT_INFO, {**_export_info(run, model), **report})

    atomic_directory(out, write)
    return report


def _parity(run: Run, fp32: Any, examples: list[Any], data: Any, tolerance: float) -> dict[str, Any]:
    """ONNX Runtime's logits against PyTorch's on ``examples``: refused beyond ``tolerance``, else the figures
    (with the metrics of both when ``data``, the labelled examples, is given)."""
    reference = torch_logits(run, examples)
    got = onnx_logits(fp32, run, examples)
    diff = max_difference(got, reference)
    if not diff <= tolerance:
        raise UniPELTError(
            f"ONNX Runtime's logits differ from PyTorch's by up to {diff:.2e} on {len(examples)} test inputs "
            f"(allowed {tolerance:.0e}); nothing was written"
        )
    result: dict[str, Any] = {"parity_max_abs_diff": diff}
    if data is not None:
        result["metrics_torch"] = run.kind.evaluate_run(run, data, progress=False)
        result["metrics_onnx"] = run.kind.evaluate_run(_onnx_run(run, fp32), data, progress=False)
    return result


def _onnx_run(run: Run, sess: Any) -> OnnxRun:
    """A session of the graph being exported, used as the run it was traced from."""
    return OnnxRun(sess, run.kind, run.preprocessor, run.max_length, run.labels, run.metric_kind, run.folder)


def _export_info(run: Run, model: Any) -> dict[str, Any]:
    """What predict and serve read from an export folder about its task."""
    metric, score = run_score(run.folder)
    return {
        "task": default_name(run.config, run.folder),
        "kind": run.kind.name,
        "metric_kind": run.metric_kind,
        "tag_column": run.config.tag_column,
        "labels": run.labels,
        "regression": run.regression,
        "pair": pair_task(run.config),
        "max_length": run.config.max_length,
        "text_columns": run.input_columns,
        "metric": metric,
        "score": score,
        "parameters": model.parameter_counts() if hasattr(model, "parameter_counts") else {},
        "method": run.config.method,
        "model": run.config.model,
    }


def _quantize(
    tmp: Path, run: Any, examples: list[Any], data: Any, fp32: Any, threads: int | None
) -> dict[str, Any]:
    """``model.int8.onnx`` (dynamic quantisation) and its change against fp32 on ``examples``: outputs, the main
    metric when ``data`` (the examples, labelled) is given, speed and size."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model.int8.onnx"), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    int8 = session(tmp / "model.int8.onnx", threads)
    result: dict[str, Any] = {}
    start = time.perf_counter()
    reference = onnx_logits(fp32, run, examples)
    fp32_seconds = time.perf_counter() - start
    start = time.perf_counter()
    got = onnx_logits(int8, run, examples)
    int8_seconds = time.perf_counter() - start
    result["max_abs_diff_vs_fp32"] = max_difference(got, reference)
    if data is not None:
        metric = run.kind.run_metric(run.metric_kind)
        before = run.kind.evaluate_run(_onnx_run(run, fp32), data, progress=False)[metric]
        after = run.kind.evaluate_run(_onnx_run(run, int8), data, progress=False)[metric]
        result.update({"metric": metric, "fp32": before, "int8": after, "change": after - before})
    result["test_set_seconds"] = {"fp32": round(fp32_seconds, 3), "int8": round(int8_seconds, 3)}
    result["test_set_latency_ratio_int8_over_fp32"] = round(int8_seconds / fp32_seconds, 3)
    latency_fp32, latency_int8 = single_latency(fp32, run), single_latency(int8, run)
    result["latency_1x128_ms"] = {"fp32": round(latency_fp32 * 1e3, 3), "int8": round(latency_int8 * 1e3, 3)}
    result["latency_1x128_ratio_int8_over_fp32"] = round(latency_int8 / latency_fp32, 3)
    result["bytes"] = {n: (tmp / n).stat().st_size for n in ("model.onnx", "model.int8.onnx")}
    return result


def read_report(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / EXPORT_INFO).read_text())
