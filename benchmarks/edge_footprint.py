"""Edge footprint: peak RSS and latency of one 1 x 128 input for MiniLM UniPELT (APL: adapter + prefix + LoRA,
gated) in PyTorch, ONNX fp32 and ONNX int8, against the plain base model measured the same way.

Each figure comes from a fresh child process that loads one model, runs 3 warm-up and ``--repeats`` timed
forwards of a 1 x 128 batch with one thread, and reports the median latency and its peak RSS (VmHWM), so the
numbers are what a process serving only that model needs. The APL model is the SST-2 run of
``benchmarks/serve_load.py``; its export (with int8) also gives the accuracy change of quantisation.

    flock /tmp/unipelt-bench.lock .venv/bin/python -m benchmarks.edge_footprint
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "serve"

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
kind, path, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids = np.full((1, 128), 2000, dtype=np.int64); ids[0, 0], ids[0, -1] = 101, 102
batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
if kind.startswith("torch"):
    import torch
    torch.set_num_threads(1)
    if kind == "torch-base":
        from unipelt.backbones import load_base_model
        model = load_base_model("minilm", "classification", num_labels=2).eval()
    else:
        from unipelt.inference import Run
        model, _ = Run(path).load()
        model.eject_prefix_mlp()
    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    def call():
        with torch.inference_mode():
            return model(**tensors).logits
else:
    import onnxruntime as ort
    options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    def call():
        return session.run(None, {n: batch[n] for n in names})
for _ in range(3):
    call()
times = []
for _ in range(repeats):
    start = time.perf_counter(); call(); times.append(time.perf_counter() - start)
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
print(json.dumps({"latency_ms_median": round(float(np.median(times)) * 1e3, 2),
                  "latency_ms_p90": round(float(np.percentile(times, 90)) * 1e3, 2),
                  "peak_rss_mb": round(int(status["VmHWM"].split()[0]) / 1024, 1)}))
"""


def export_base(folder: Path) -> None:
    """The plain MiniLM classifier as ONNX (fp32 and dynamic int8), the same way `unipelt export` traces."""
    if (folder / "model.int8.onnx").is_file():
        return
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from unipelt.backbones import load_base_model
    from unipelt.inference.export import OPSET, _Logits

    folder.mkdir(parents=True, exist_ok=True)
    model = load_base_model("minilm", "classification", num_labels=2).eval()
    names = ("input_ids", "attention_mask", "token_type_ids")
    sample = (
        torch.ones(2, 16, dtype=torch.long),
        torch.ones(2, 16, dtype=torch.long),
        torch.zeros(2, 16, dtype=torch.long),
    )
    sample[1][1, 8:] = 0
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    with torch.no_grad():
        torch.onnx.export(
            _Logits(model, names),
            sample,
            str(folder / "model.onnx"),
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    quantize_dynamic(str(folder / "model.onnx"), str(folder / "model.int8.onnx"), weight_type=QuantType.QInt8)


def measure(kind: str, path: Path | str, repeats: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        epilog="Time: about 5 min (exports one run, then times it).", description=__doc__.splitlines()[0]
    )
    p.add_argument("--run", type=Path, default=OUT / "runs" / "sst2")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", type=Path, default=OUT / "edge.jsonl")
    args = p.parse_args(argv)
    import torch

    from unipelt.inference.export import export_run

    torch.set_num_threads(1)  # a shared machine: the export and parity pass stay on one core

    apl = OUT / "edge" / f"{args.run.name}-onnx"
    report = None
    if not (apl / "model.int8.onnx").is_file():
        report = export_run(args.run, apl, quantize="int8", threads=1)
    else:
        report = json.loads((apl / "export.json").read_text())
    base = OUT / "edge" / "base-onnx"
    export_base(base)
    cases = [
        ("base", "pytorch", "torch-base", ""),
        ("base", "onnx-fp32", "onnx", base / "model.onnx"),
        ("base", "onnx-int8", "onnx", base / "model.int8.onnx"),
        ("unipelt-apl", "pytorch", "torch-run", args.run),
        ("unipelt-apl", "onnx-fp32", "onnx", apl / "model.onnx"),
        ("unipelt-apl", "onnx-int8", "onnx", apl / "model.int8.onnx"),
    ]
    with open(args.out, "a") as handle:
        for model, runtime, kind, path in cases:
            record = {"model": model, "runtime": runtime, **measure(kind, path, args.repeats)}
            if runtime.startswith("onnx"):
                record["file_mb"] = round(Path(path).stat().st_size / 2**20, 1)
            record["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            print(json.dumps(record), flush=True)
            handle.write(json.dumps(record) + "\n")
        int8 = report.get("int8", {})
        summary = {
            "model": "unipelt-apl",
            "export": {k: report.get(k) for k in ("examples", "parity_max_abs_diff")},
            "int8": int8,
        }
        print(json.dumps(summary), flush=True)
        handle.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
