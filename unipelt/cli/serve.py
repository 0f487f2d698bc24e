"""``unipelt serve``: answer many trained runs from one process and one frozen backbone over HTTP.

Each run becomes a task named after its GLUE task (``rte``, ``sst2``, ...), or after its folder when it was
trained on your own files; ``NAME=RUN`` names it yourself, and repeated names get ``-2``, ``-3``. All runs must
share one base model. With ``--runtime onnx`` each argument is a folder written by ``unipelt export`` (a run
folder is exported first) and every task runs its own ONNX Runtime session (no shared backbone, no gate values).

The server binds 127.0.0.1 unless told otherwise; another address needs an API key (``--api-key``,
``--api-key-file`` or ``UNIPELT_API_KEY``) or ``--insecure``. ``--ssl-certfile`` / ``--ssl-keyfile`` serve HTTPS.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from unipelt.cli.common import add_compile_flag, add_device_flags, placement_of
from unipelt.errors import UniPELTError

KEY_ENV = "UNIPELT_API_KEY"


def build_engine(
    specs: list[str],
    runtime: str,
    threads: int | None = None,
    int8: bool = False,
    placement: Any = None,
    compile: str | None = None,
) -> Any:
    if runtime == "onnx":
        if compile:
            raise UniPELTError("--compile applies to the torch runtime, not to --runtime onnx")
        from unipelt.inference.onnx_runtime import OnnxEngine

        return OnnxEngine(specs, quantized=int8, threads=threads)
    from unipelt.inference.engine import TorchEngine

    return TorchEngine(specs, placement, compile=compile)


class NoEncoderTasks:
    """The engine of a server that answers only generation tasks: /v1/predict knows no task."""

    runtime = "torch"
    tasks: dict[str, Any] = {}

    def forward(self, rows: Any, gates: bool = False) -> Any:
        raise UniPELTError("this server has no classification tasks")


def build_generation(
    specs: list[str], args: argparse.Namespace, placement: Any = None, backbone: Any = None
) -> Any:
    """The causal-LM runs among ``specs`` on one backbone (``backbone``'s weights when given), or None."""
    if not specs:
        return None
    if args.runtime == "onnx":
        raise UniPELTError(
            f"{specs[0]} is a causal-LM run: generation is served with PyTorch only (drop --runtime onnx)"
        )
    from unipelt.inference.generation_engine import GenerationEngine

    device = None if placement is None else placement.device
    return GenerationEngine(
        specs,
        max_rows=args.max_running_rows,
        max_step_tokens=args.max_step_tokens,
        device=device,
        backbone=backbone,
    )


def _base_of(spec: str) -> str:
    from unipelt.inference.served_tasks import split_name
    from unipelt.pretrained import resolve_model
    from unipelt.training.run_files import read_run_config

    model = read_run_config(split_name(spec)[1]).model
    return str(Path(resolve_model(model)).resolve())


def served_on(spec: str) -> str | None:
    """The routes that answer a run, as its task kind says (``serves``); a folder that is no readable run
    goes with the /v1/predict runs, whose engine says what is wrong with it."""
    from unipelt.inference.served_tasks import split_name
    from unipelt.kinds import kind_of_run

    try:
        info = json.loads((split_name(spec)[1] / "labels.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "predict"
    return kind_of_run(info).serves if isinstance(info, dict) else "predict"


def build_app(args: argparse.Namespace, key: str | None, where: Any = None) -> tuple[Any, list[Any]]:
    """(the app, every served task): runs whose kinds serve "predict" on /v1/predict, those that serve
    "generate" on the OpenAI routes (a kind that serves neither is refused by name); the models go where
    ``where`` (a Placement; default: the verb's device flags) says."""
    where = placement_of(args) if where is None else where
    chat = [spec for spec in args.runs if served_on(spec) == "generate"]
    encoders = [spec for spec in args.runs if spec not in chat]
    if chat and encoders and args.runtime == "torch" and _base_of(chat[0]) != _base_of(encoders[0]):
        raise UniPELTError(
            f"{chat[0]} and {encoders[0]} were trained on different base models; one server shares one backbone"
        )
    engine = (
        build_engine(encoders, args.runtime, args.threads, args.int8, where, args.compile)
        if encoders
        else NoEncoderTasks()
    )
    # Generation shares the encoder tasks' backbone on PyTorch; ONNX models have none to share.
    models = list(getattr(engine, "models", {}).values()) if args.runtime == "torch" else []
    generation = build_generation(chat, args, where, models[0].base_model if models else None)
    served = [*engine.tasks.values(), *(generation.tasks.values() if generation else [])]
    return assemble(engine, generation, options_from(args, key)), served


def assemble(engine: Any, generation: Any = None, options: Any = None) -> Any:
    """The app of an encoder engine and, when given, a generation engine on the OpenAI-compatible routes
    (errors there in OpenAI's shape; its scheduler's state in /metrics)."""
    from unipelt.inference.serve import create_app

    if generation is None:
        return create_app(engine, options)
    from unipelt.inference.http_errors import openai_error
    from unipelt.inference.openai_api import openai_router, scheduler_metrics

    app = create_app(
        engine, options, routers=[(openai_router(generation), openai_error)], on_shutdown=[generation.close]
    )
    scheduler_metrics(app.state.metrics.registry, generation.scheduler)
    return app


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key, else --api-key-file (its first line), else $UNIPELT_API_KEY; None without one."""
    if args.api_key:
        return args.api_key
    if args.api_key_file:
        path = Path(args.api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UniPELTError(f"cannot read the API key file {path}: {error}") from None
        if not key or not key[0].strip():
            raise UniPELTError(f"the API key file {path} is empty")
        return key[0].strip()
    return os.environ.get(KEY_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(args: argparse.Namespace, key: str | None) -> None:
    """Refuse a non-loopback bind without a key (unless --insecure, which warns); TLS needs both files."""
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise UniPELTError("TLS needs both --ssl-certfile and --ssl-keyfile")
    for path in (args.ssl_certfile, args.ssl_keyfile):
        if path and not Path(path).is_file():
            raise UniPELTError(f"TLS file not found: {path}")
    if is_loopback(args.host) or key:
        return
    if not args.insecure:
        raise UniPELTError(
            f"--host {args.host} lets other machines in, and this server has no API key: set one with "
            f"--api-key-file PATH (or {KEY_ENV}, or --api-key), or pass --insecure to serve without one"
        )
    print(
        f"unipelt: WARNING: serving on {args.host} without an API key (--insecure): anyone who reaches this "
        "address can use the server",
        file=sys.stderr,
        flush=True,
    )


def options_from(args: argparse.Namespace, key: str | None) -> Any:
    from unipelt.inference.serve import ServeOptions

    return ServeOptions(
        batching="none" if args.no_batching else args.batching,
        max_batch_tokens=args.max_batch_tokens,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_inputs=args.max_inputs,
        max_body_bytes=args.max_body_bytes,
        max_text_chars=args.max_text_chars,
        max_queue=args.max_queue,
        api_key=key,
        public_metrics=args.public_metrics,
        cors_origins=tuple(args.cors_origin or ()),
        log_inputs=args.log_inputs,
    )


def request_log(level: str) -> None:
    """One line per request on standard error (the ``unipelt.serve`` logger), at ``info`` and below."""
    logger = logging.getLogger("unipelt.serve")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        import unipelt.inference.serve  # noqa: F401 - its imports are the serve extra
    except ImportError as error:
        raise UniPELTError(
            f"`unipelt serve` needs the serve extra: pip install 'unipelt[serve]' ({error})"
        ) from error
    key = api_key(args)
    check_exposure(args, key)
    where = placement_of(args)
    if args.int8 and args.runtime != "onnx":
        raise UniPELTError("--int8 serves quantised ONNX models: add --runtime onnx")
    if args.runtime == "onnx" and ((args.device != "auto" and where.device.type != "cpu") or args.dtype):
        raise UniPELTError("--runtime onnx runs on the CPU in float32: leave out --device and --dtype")
    app, served = build_app(args, key, where)
    request_log(args.log_level)
    scheme = "https" if args.ssl_certfile else "http"
    names = ", ".join(f"{task.name} ({task.source})" for task in served)
    print(f"serving {len(served)} task(s) on {scheme}://{args.host}:{args.port}: {names}", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,  # the request log above replaces it (with request ids, tasks and rows)
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    return 0


def _add_batching_flags(p: argparse.ArgumentParser) -> None:
    """How waiting requests become forwards (and, for causal LMs, decoding steps)."""
    batching = p.add_argument_group("batching")
    batching.add_argument(
        "--batching",
        default="tokens",
        choices=["tokens", "wait", "none"],
        help="tokens (default): batches of what is waiting, by length, under --max-batch-tokens, never waiting; "
        "wait: the first request waits --max-wait-ms for others; none: one forward per request",
    )
    batching.add_argument(
        "--max-batch-tokens", type=int, default=1024, help="padded tokens (rows x longest) per forward"
    )
    batching.add_argument("--max-batch", type=int, default=32, help="most rows in one forward (default 32)")
    batching.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="--batching wait: the first request's wait"
    )
    batching.add_argument("--no-batching", action="store_true", help="the same as --batching none")
    batching.add_argument(
        "--max-running-rows",
        type=int,
        default=16,
        help="causal-LM runs: most requests generating at once (continuous batching; default 16)",
    )
    batching.add_argument(
        "--max-step-tokens",
        type=int,
        default=512,
        help="causal-LM runs: most tokens through the model in one step, prefill included (default 512)",
    )


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    """Request size and queue limits; past them a request gets 413 or 429."""
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-inputs", type=int, default=64, help="most inputs in one request (more: 413)")
    limits.add_argument("--max-body-bytes", type=int, default=1_000_000, help="largest request body (413)")
    limits.add_argument(
        "--max-text-chars", type=int, default=20_000, help="longest text, in characters (413)"
    )
    limits.add_argument("--max-queue", type=int, default=256, help="most requests waiting (more: 429)")


def _add_access_flags(p: argparse.ArgumentParser) -> None:
    """Who may call the server, over what, and what the request log may hold."""
    access = p.add_argument_group("access")
    access.add_argument(
        "--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (or set {KEY_ENV})"
    )
    access.add_argument("--api-key-file", default=None, help="read the key from this file's first line")
    access.add_argument("--public-metrics", action="store_true", help="/metrics without the key")
    access.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a key")
    access.add_argument("--ssl-certfile", default=None, help="TLS certificate (PEM): serve HTTPS")
    access.add_argument("--ssl-keyfile", default=None, help="TLS private key (PEM)")
    access.add_argument(
        "--cors-origin", action="append", metavar="ORIGIN", help="let browsers from ORIGIN call (repeatable)"
    )
    access.add_argument("--log-inputs", action="store_true", help="put request texts in the request log")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve many runs over HTTP on one backbone (batched)")
    p.add_argument(
        "runs", nargs="+", metavar="RUN", help="run folders (or NAME=RUN); export folders with --runtime onnx"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    _add_batching_flags(p)
    _add_limit_flags(p)
    _add_access_flags(p)
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    p.add_argument("--int8", action="store_true", help="with --runtime onnx: serve the int8 models")
    add_device_flags(p)  # --threads also sizes each ONNX Runtime session
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="info (default) logs one line per request",
    )
    add_compile_flag(p)
    p.set_defaults(func=run)
    return p
