"""Device flags and the one batch loop: devices resolve or fail in one line, every verb that loads a model
takes --device/--threads, batches follow the model's device and dtype, and outputs come back as float32 on
the host. Everything runs on the CPU; a CUDA request on a machine without one must be refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import batch, perturb, tiny_model

from unipelt import add_unipelt
from unipelt.cli import build_parser, main
from unipelt.devices import Placement, placement, resolve_device, resolve_dtype
from unipelt.errors import UniPELTError
from unipelt.running.loop import forward_batches, logits_and_labels, model_dtype, to_model

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
MODEL_VERBS = ("eval", "predict", "serve", "optimize", "export", "generate", "train", "tune")


def test_devices_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(None) is None
    with pytest.raises(UniPELTError, match="not a device"):
        resolve_device("tpu")
    with pytest.raises(UniPELTError, match="is not one of"):
        resolve_dtype("int4")
    with pytest.raises(UniPELTError, match="--threads must be at least 1"):
        placement("cpu", None, 0)


@NO_CUDA
@pytest.mark.parametrize("spec", ["cuda", "cuda:1", "CUDA:0"])
def test_cuda_is_refused_in_one_line_without_a_gpu(spec):
    with pytest.raises(UniPELTError, match="no CUDA device is available on this machine"):
        resolve_device(spec)


def test_threads_are_set():
    before = torch.get_num_threads()
    try:
        assert placement("cpu", "fp32", 1) == Placement(torch.device("cpu"), torch.float32)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_every_verb_that_loads_a_model_has_the_device_flags():
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    for verb in MODEL_VERBS:
        flags = {s for action in verbs[verb]._actions for s in action.option_strings}
        assert {"--device", "--threads"} <= flags, verb
    for verb in ("eval", "predict", "serve", "generate"):
        flags = {s for action in verbs[verb]._actions for s in action.option_strings}
        assert "--dtype" in flags, verb


@NO_CUDA
@pytest.mark.parametrize("verb", ["eval", "predict", "optimize", "export", "generate", "serve"])
def test_asking_for_cuda_without_a_gpu_is_one_error_line(verb, tmp_path, capsys):
    extra = {"predict": ["--input", "-"], "generate": ["--prompt", "hi"], "export": ["--out", tmp_path / "x"]}
    args = [verb, tmp_path / "no-run", *extra.get(verb, []), "--device", "cuda"]
    if verb == "serve":
        pytest.importorskip("fastapi")
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "unipelt: error: --device cuda: no CUDA device is available on this machine; use --device cpu or auto"
    ]


def test_batches_follow_the_model_dtype_and_outputs_come_back_float32():
    model = add_unipelt(tiny_model("bert"), "unipelt")
    perturb(model)
    model.eval()
    inputs = batch("bert")
    with torch.no_grad():
        reference = model(**inputs).logits
    labels = torch.arange(inputs["input_ids"].shape[0])
    batches = [{**inputs, "labels": labels}]
    logits, got_labels = logits_and_labels(model, batches)
    np.testing.assert_array_equal(logits, reference.numpy())
    np.testing.assert_array_equal(got_labels, labels.numpy())
    model.to(torch.bfloat16)
    assert model_dtype(model) is torch.bfloat16
    placed = to_model(
        {"input_ids": inputs["input_ids"], "x": torch.ones(2)}, torch.device("cpu"), torch.bfloat16
    )
    assert placed["input_ids"].dtype == torch.long and placed["x"].dtype == torch.bfloat16
    ((output, given),) = list(forward_batches(model, batches))
    assert output.dtype == torch.float32 and output.device.type == "cpu" and given is batches[0]
    np.testing.assert_allclose(output.numpy(), reference.numpy(), atol=0.1)  # bf16 rounding
    assert not torch.is_inference_mode_enabled()  # the loop's inference mode stays inside it


@pytest.mark.slow
def test_eval_and_predict_on_an_explicit_cpu_device_match_the_default(
    tiny_model_dir, glue_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    train = ["train", "--model", tiny_model_dir, "--data-dir", glue_dir, "--task", "rte", "--k", "8"]
    fast = ["--n-valid", "8", "--epochs", "1", "--batch-size", "8", "--max-length", "48", "--threads", "1"]
    assert main([str(a) for a in [*train, *fast, "--out", out, "--device", "cpu"]]) == 0
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
    capsys.readouterr()
    results = []
    for flags in ([], ["--device", "cpu", "--threads", "1"], ["--device", "cpu", "--dtype", "bf16"]):
        assert main(["eval", str(out), "--json", *flags]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1]
    assert results[2]["examples"] == results[0]["examples"]
    texts = tmp_path / "texts.txt"  # plain lines: two tab-separated texts each
    texts.write_text("A man sleeps.\tA person rests.\nIt rains.\tThe sun shines.\n")
    records = []
    for flags in ([], ["--device", "cpu", "--threads", "1"]):
        assert main(["predict", str(out), "--input", str(texts), *flags]) == 0
        records.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert records[0] == records[1] and len(records[0]) == 2
