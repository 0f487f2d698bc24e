"""The cost-measurement protocol shared by the cost scripts (cost.py for unipelt, peer_cost.py, peer_peft_cost.py).

Imports only torch, the standard library and the modules of this folder (:mod:`cost_measures`, :mod:`timing`,
:mod:`machine`), plus the light, transformers-version
agnostic :mod:`unipelt.pretrained` and :mod:`unipelt.backbones` inside functions, so it runs in every venv. The
scripts put this folder and the repository root on ``sys.path``.

A cost script describes its methods as :class:`Method` objects (how to build the model for inference and
for training) and calls :func:`main`.  The protocol then measures, for one model:

* ``params``: parameter counts (trainable in the training form, with and without the task head; parameters
  added over the base model in the inference form, e.g. after ejecting a prefix MLP or merging LoRA);
* ``infer_latency``: seconds per forward pass at each ``batch x seq_len`` of ``--infer-batches`` x
  ``--seq-len``, all methods interleaved in this process, eval mode, ``torch.inference_mode``;
  ``ratio`` = median / median of the ``base`` method;
* ``train_step``: seconds per training step (forward + backward + AdamW step) at ``--train-batch``, all
  methods interleaved; ``ratio`` = median / median of the ``full_ft`` method;
* ``peak_memory`` (unless ``--no-memory``): extra peak RSS (CPU) or allocated memory (GPU) of 2 forward
  passes at the largest inference shape, and of 2 training steps, each in a fresh subprocess per method;
  ratios as above.

Timing on a shared machine: multi-threaded torch slows down several-fold whenever another process takes a
core.  The loops therefore use :func:`timing.time_until_clean`: interleaved rounds are added (up to
``--max-rounds-factor`` x the repeats) until each method has ``repeats`` *clean* calls, during which other
processes used under ``--clean-threshold`` cores.  ``median_s`` / ``ratio`` are over the clean calls when
there are at least 3 (``clean_sample``), else over all; ``median_all_s`` / ``ratio_all`` use every call and
``ratio_min`` the minima.  Each timing record also carries the raw ``times_s`` with a ``clean`` flag per call,
``loop_foreign_cores`` (average cores used by other processes during the loop) and ``loop_steal_s``.

Output: JSON lines to ``--out`` (overwritten), one record per method x measure, plus one
``measure == "machine"`` record first.  Every record carries ``library``, ``library_version``, ``model``,
``device``, ``threads`` and ``run_id``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from benchmarks import machine, timing
from benchmarks.cost_measures import (
    make_optimizer,
    memory_child,
    param_record,
    resolve_device,
    timed_loop,
    timing_stats,
)

BASE = "base"
FULL_FT = "full_ft"


@dataclass
class Method:
    """One configuration to measure.

    ``build(mode)`` returns a ready model: ``mode == "infer"``: eval mode, in the deployable form (prefix MLP
    ejected, mergeable weights merged if that is what the method name says); ``mode == "train"``: train
    mode, ``requires_grad`` set on exactly the parameters that are trained.  ``infer`` / ``train`` say which
    measures apply (the frozen base is not trained; full fine-tuning infers like the base).
    """

    name: str
    build: Callable[[str], torch.nn.Module]
    infer: bool = True
    train: bool = True
    note: str = ""
    extra: dict = field(default_factory=dict)


def model_loader(
    model_dir: str, random_init: bool, seed: int, num_labels: int = 2
) -> tuple[object, Callable[[], torch.nn.Module]]:
    """(config, load): ``load()`` gives a fresh classification model with the same head initialisation each time.

    The model is built by :func:`unipelt.backbones.load_base_model`, the one builder the library itself uses.
    """
    from transformers import AutoConfig

    from unipelt.backbones import load_base_model

    config = AutoConfig.from_pretrained(model_dir, num_labels=num_labels)
    init = "random" if random_init else "pretrained"

    def load() -> torch.nn.Module:
        torch.manual_seed(seed)
        return load_base_model(model_dir, num_labels=num_labels, init=init)

    return config, load


def reference_methods(load: Callable[[], torch.nn.Module]) -> list[Method]:
    """The two references every library is measured against: the frozen base and full fine-tuning."""

    def plain(train_all: bool) -> Callable[[str], torch.nn.Module]:
        def build(mode: str) -> torch.nn.Module:
            model = load()
            for parameter in model.parameters():
                parameter.requires_grad = train_all and mode == "train"
            return model.train() if mode == "train" else model.eval()

        return build

    return [
        Method(BASE, plain(False), train=False, note="plain transformers model, frozen"),
        Method(FULL_FT, plain(True), infer=False, note="all parameters trained"),
    ]


def resolve_model_dir(model: str, model_dir: str | None = None) -> str:
    """A model folder: ``--model-dir`` if given, else minilm / mpnet / a folder through unipelt.pretrained."""
    from unipelt.pretrained import resolve_model

    return resolve_model(model_dir or model)


def add_cli_args(p: argparse.ArgumentParser) -> None:
    """Add the protocol's flags to a script's parser."""
    p.add_argument(
        "--model",
        default="minilm",
        help="minilm (packaged, the default), mpnet (packaged), a model folder, or a label used with --model-dir",
    )
    p.add_argument("--model-dir", default=None, help="model folder, overriding --model for loading")
    p.add_argument("--random-init", action="store_true", help="random weights from the model's config")
    p.add_argument("--out", help="JSON-lines output file (overwritten)")
    p.add_argument("--methods", default="", help="comma-separated subset of methods (default: all)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: all cores)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--infer-batches", default="1,32", help="comma-separated inference batch sizes")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds for inference at the largest batch")
    p.add_argument(
        "--repeats-small",
        type=int,
        default=0,
        help="timed rounds for smaller inference batches (0: 3 x --repeats)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-repeats", type=int, default=5, help="timed training-step rounds")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate for the timed steps")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    p.add_argument("--no-train", action="store_true", help="skip training-step timing")
    p.add_argument("--no-infer", action="store_true", help="skip inference timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-rounds-factor",
        type=float,
        default=3.0,
        help="on a busy machine, run up to this many times the repeats to collect clean calls (1: no retry)",
    )
    p.add_argument(
        "--clean-threshold",
        type=float,
        default=0.15,
        help="a call is clean if other processes used under this many cores meanwhile",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each timing loop wait up to this many seconds for other processes to go idle",
    )
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: METHOD:PHASE memory child


def main(
    methods: Sequence[Method],
    args: argparse.Namespace,
    *,
    library: str,
    library_version: str,
    model_name: str,
    vocab_size: int,
    num_labels: int = 2,
    head_names: Sequence[str] = ("classifier", "heads.", "score"),
    packages: Sequence[str] = ("transformers", "adapters", "peft"),
    extra_meta: dict | None = None,
) -> list[dict]:
    """Run the protocol over ``methods`` (must include ``base`` and ``full_ft`` for the ratios).

    Returns the records (also written to ``args.out`` when given).  With ``args.child`` set, runs one
    memory measurement instead and prints it for the parent (internal).
    """
    by_name = {m.name: m for m in methods}
    if args.child:
        memory_child(by_name, args, vocab_size, num_labels)
        return []
    wanted = [s for s in args.methods.split(",") if s]
    if wanted:
        unknown = set(wanted) - set(by_name)
        if unknown:
            raise SystemExit(f"unknown methods {sorted(unknown)}; known: {sorted(by_name)}")
        keep = set(wanted) | {BASE, FULL_FT}
        methods = [m for m in methods if m.name in keep]
    device = resolve_device(args.device)
    threads = timing.set_threads(args.threads)
    torch.manual_seed(args.seed)
    run_id = time.strftime("%Y%m%dT%H%M%S")
    common = {
        "library": library,
        "library_version": library_version,
        "model": model_name,
        "device": device.type,
        "threads": threads,
        "run_id": run_id,
    }
    records: list[dict] = []
    out = open(args.out, "w") if args.out else None  # noqa: SIM115

    def emit(rec: dict) -> None:
        rec = {**common, **rec}
        records.append(rec)
        line = json.dumps(rec)
        if out:
            out.write(line + "\n")
            out.flush()
        short = {k: v for k, v in rec.items() if k not in common and k not in ("times_s", "clean")}
        print(json.dumps(short), flush=True)

    emit({"measure": "machine", **machine.machine_info(packages), **(extra_meta or {})})
    sync = (lambda: timing.synchronize(device)) if device.type == "cuda" else None

    # ---- parameter counts (also checks every method builds; failures are recorded and skipped)
    ok: list[Method] = []
    base_total = None
    for m in methods:
        try:
            rec = param_record(m, base_total, head_names)
        except Exception as e:  # noqa: BLE001 - a peer library may not support a method on a model
            emit({"method": m.name, "measure": "error", "error": f"{type(e).__name__}: {e}"[:2000]})
            if m.name in (BASE, FULL_FT):
                raise
            continue
        if m.name == BASE:
            base_total = rec["total_infer_form"]
            rec["added_at_inference"] = 0
        if base_total:
            for k in ("trainable", "trainable_without_head", "added_at_inference"):
                if k in rec:
                    rec["pct_" + k] = 100.0 * rec[k] / base_total
        emit(
            {
                "method": m.name,
                "measure": "params",
                "base_total": base_total,
                "note": m.note,
                **m.extra,
                **rec,
            }
        )
        ok.append(m)
    methods = ok

    # ---- inference latency, interleaved
    batches = sorted(int(b) for b in args.infer_batches.split(",") if b)
    if not args.no_infer:
        infer_models = {m.name: m.build("infer").to(device) for m in methods if m.infer}
        for bs in batches:
            batch = timing.make_batch(bs, args.seq_len, vocab_size, seed=args.seed, device=device)
            fns = {n: timing.inference_fn(mod, batch) for n, mod in infer_models.items()}
            reps = args.repeats if bs == batches[-1] else (args.repeats_small or 3 * args.repeats)
            times, clean, ctx = timed_loop(fns, reps, args.warmup, sync, args)
            for n, ts in times.items():
                emit(
                    {
                        "method": n,
                        "measure": "infer_latency",
                        "batch": bs,
                        "seq_len": args.seq_len,
                        **timing_stats(n, times, clean, BASE, min(3, reps)),
                        "ratio_to": BASE,
                        "warmup": args.warmup,
                        **ctx,
                        "times_s": ts,
                        "clean": clean[n],
                    }
                )
        del infer_models

    # ---- training step, interleaved
    if not args.no_train:
        train_models = {m.name: m.build("train").to(device) for m in methods if m.train}
        batch = timing.make_batch(
            args.train_batch, args.seq_len, vocab_size, seed=args.seed, num_labels=num_labels, device=device
        )
        fns = {
            n: timing.train_step_fn(mod, batch, make_optimizer(mod, args.lr))
            for n, mod in train_models.items()
        }
        warm = max(1, args.warmup // 2)
        times, clean, ctx = timed_loop(fns, args.train_repeats, warm, sync, args)
        for n, ts in times.items():
            emit(
                {
                    "method": n,
                    "measure": "train_step",
                    "batch": args.train_batch,
                    "seq_len": args.seq_len,
                    **timing_stats(n, times, clean, FULL_FT, min(3, args.train_repeats)),
                    "ratio_to": FULL_FT,
                    "warmup": warm,
                    **ctx,
                    "times_s": ts,
                    "clean": clean[n],
                }
            )
        del train_models

    # ---- peak memory, one fresh process per method and phase
    if not args.no_memory:
        entry = machine.entry_point()
        argv = list(sys.argv[1:])
        phases = [p for p, skip in (("infer", args.no_infer), ("train", args.no_train)) if not skip]
        for phase in phases:
            results = {}
            for m in methods:
                if not (m.infer if phase == "infer" else m.train):
                    continue
                try:
                    results[m.name] = machine.run_json_child(
                        [*entry, *argv, "--child", f"{m.name}:{phase}"], timeout=3600, env=machine.child_env()
                    )
                except Exception as e:  # noqa: BLE001
                    emit(
                        {
                            "method": m.name,
                            "measure": "error",
                            "phase": phase,
                            "error": f"{type(e).__name__}: {e}"[-2000:],
                        }
                    )
            ref = results.get(BASE if phase == "infer" else FULL_FT)
            for n, r in results.items():
                emit(
                    {
                        "method": n,
                        "measure": "peak_memory",
                        **{k: v for k, v in r.items() if k != "method"},
                        "ratio": r["peak_mb"] / ref["peak_mb"] if ref and ref["peak_mb"] else None,
                        "ratio_to": BASE if phase == "infer" else FULL_FT,
                    }
                )
    if out:
        out.close()
    return records


def run_for_model(
    build_methods: Callable[[str], Sequence[Method]],
    args: argparse.Namespace,
    **protocol: object,
) -> list[dict]:
    """The shared front of every library's cost script: resolve ``--model``/``--model-dir`` to a folder, build
    that library's methods on it (``build_methods(model_dir)``) and run :func:`main` with the library's own
    keywords (``library``, ``library_version``, ``packages``, ``head_names``...), recording the folder."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected for every method
    model_dir = resolve_model_dir(args.model, args.model_dir)
    return main(
        build_methods(model_dir),
        args,
        model_name=args.model,
        vocab_size=AutoConfig.from_pretrained(model_dir).vocab_size,
        extra_meta={"model_dir": model_dir, "random_init": args.random_init},
        **protocol,
    )
