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
    engine = build_engine(args.runs, args.runtime, args.threads, args.int8, where)
    app = create_app(
        engine,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=not args.no_batching,
        max_inputs=args.max_inputs,
    )
    names = ", ".join(f"{name} ({task.source})" for name, task in engine.tasks.items())
    print(f"serving {len(engine.tasks)} task(s) on http://{args.host}:{args.port}: {names}", flush=True)
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
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    p.add_argument("--int8", action="store_true", help="with --runtime onnx: serve the int8 models")
    add_device_flags(p)  # --threads also sizes each ONNX Runtime session
    p.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.set_defaults(func=run)
    return p
