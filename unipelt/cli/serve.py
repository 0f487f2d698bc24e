"""``unipelt serve``: answer many trained runs from one process and one frozen backbone over HTTP.

Each run becomes a task named after its GLUE task (``rte``, ``sst2``, ...), or after its folder when it was
trained on your own files; ``NAME=RUN`` names it yourself, and repeated names get ``-2``, ``-3``. All runs must
share one base model. With ``--runtime onnx`` each argument is a folder written by ``unipelt export`` (a run folder is
exported first) and every task runs its own ONNX Runtime session (no shared backbone, no gate values).
"""

from __future__ import annotations

import argparse
from typing import Any

from unipelt.cli.common import add_device_flags, placement_of
from unipelt.errors import UniPELTError


def build_engine(
    specs: list[str], runtime: str, threads: int | None = None, int8: bool = False, placement: Any = None
) -> Any:
    if runtime == "onnx":
        from unipelt.inference.onnx_runtime import OnnxEngine

        return OnnxEngine(specs, quantized=int8, threads=threads)
    from unipelt.inference.engine import TorchEngine

    return TorchEngine(specs, placement)


class NoEncoderTasks:
    """The engine of a server that answers only causal-LM tasks: /v1/predict knows no task."""

    runtime = "torch"
    tasks: dict[str, Any] = {}

    def forward(self, rows: Any, gates: bool = False) -> Any:
        raise UniPELTError("this server has no classification tasks")


def build_generation(specs: list[str], args: argparse.Namespace, placement: Any = None) -> Any:
    """The causal-LM runs among ``specs`` on one backbone, or None when there are none."""
    if not specs:
        return None
    if args.runtime == "onnx":
        raise UniPELTError(
            f"{specs[0]} is a causal-LM run: generation is served with PyTorch only (drop --runtime onnx)"
        )
    from unipelt.inference.generation_engine import GenerationEngine

    device = None if placement is None else placement.device
    return GenerationEngine(
        specs, max_rows=args.max_running_rows, max_step_tokens=args.max_step_tokens, device=device
    )


def _base_of(spec: str) -> str:
    from pathlib import Path

    from unipelt.inference.served_tasks import split_name
    from unipelt.pretrained import resolve_model
    from unipelt.training.run_files import read_run_config

    model = read_run_config(split_name(spec)[1]).model
    return str(Path(resolve_model(model)).resolve())


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from unipelt.inference.serve import create_app
    except ImportError as error:
        raise UniPELTError(
            f"`unipelt serve` needs the serve extra: pip install 'unipelt[serve]' ({error})"
        ) from error
    where = placement_of(args)
    if args.int8 and args.runtime != "onnx":
        raise UniPELTError("--int8 serves quantised ONNX models: add --runtime onnx")
    if args.runtime == "onnx" and ((args.device != "auto" and where.device.type != "cpu") or args.dtype):
        raise UniPELTError("--runtime onnx runs on the CPU in float32: leave out --device and --dtype")
    from unipelt.inference.generation import is_chat_run
    from unipelt.inference.served_tasks import split_name

    chat = [spec for spec in args.runs if is_chat_run(split_name(spec)[1])]
    encoders = [spec for spec in args.runs if spec not in chat]
    if chat and encoders and args.runtime == "torch" and _base_of(chat[0]) != _base_of(encoders[0]):
        raise UniPELTError(
            f"{chat[0]} and {encoders[0]} were trained on different base models; one server shares one backbone"
        )
    generation = build_generation(chat, args, where)
    engine = (
        build_engine(encoders, args.runtime, args.threads, args.int8, where) if encoders else NoEncoderTasks()
    )
    app = create_app(
        engine,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=not args.no_batching,
        max_inputs=args.max_inputs,
        generation=generation,
    )
    served = [*engine.tasks.values(), *(generation.tasks.values() if generation else [])]
    names = ", ".join(f"{task.name} ({task.source})" for task in served)
    print(f"serving {len(served)} task(s) on http://{args.host}:{args.port}: {names}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve many runs over HTTP on one backbone (dynamic batching)")
    p.add_argument(
        "runs", nargs="+", metavar="RUN", help="run folders (or NAME=RUN); export folders with --runtime onnx"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="most rows in one forward (default 32)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long the first request of a batch waits for others",
    )
    p.add_argument("--max-inputs", type=int, default=64, help="most inputs in one request (more: 413)")
    p.add_argument("--no-batching", action="store_true", help="run every request alone (for comparison)")
    p.add_argument(
        "--max-running-rows",
        type=int,
        default=16,
        help="causal-LM runs: most requests generating at once (continuous batching; default 16)",
    )
    p.add_argument(
        "--max-step-tokens",
        type=int,
        default=512,
        help="causal-LM runs: most tokens through the model in one step, prefill included (default 512)",
    )
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    p.add_argument("--int8", action="store_true", help="with --runtime onnx: serve the int8 models")
    add_device_flags(p)  # --threads also sizes each ONNX Runtime session
    p.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.set_defaults(func=run)
    return p
