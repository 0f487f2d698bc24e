"""SST-2 as instructions on SmolLM2-135M-Instruct: zero-shot vs instruction-tuned methods, costs, generation speed.

Every review becomes a chat: "Is the sentiment of this review positive or negative? ..." -> "positive" /
"negative". Accuracy comes from greedy generation (the answer's first choice word, unipelt.data.chat.choice_of),
on a fixed subset of the SST-2 dev set. Phases (each writes one JSON under OUT and is skipped when it exists,
so the script is resumable: run the same command again after a kill):

    data        train pool and test subset as JSON lines
    zeroshot    SmolLM2 without training
    train       one run per method and seed (unipelt.training.train, task_type causal-lm); killed runs resume
    cost        training step time and peak memory per method, with and without gradient checkpointing (each
                measurement in a fresh process; run under `flock /tmp/unipelt-bench.lock`)
    gen         generation tokens/s of the base model and of each trained run (greedy, fixed length)
    report      a markdown table of everything measured so far

    python -m benchmarks.llm_sst2 all --k 1000 --seeds 1,2,3 --test 872      # the full protocol
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

GLUE = Path(os.environ.get("UNIPELT_DATA_DIR", HERE.parent.parent / "shared" / "data" / "glue"))
OUT = Path(os.environ.get("LLM_SST2_OUT", HERE / "out" / "llm_sst2"))
INSTRUCTION = "Is the sentiment of this review positive or negative? Answer with one word.\nReview: {}"
LABELS = ("negative", "positive")
# --task rte: entailment as a yes/no question (label order of the GLUE file: entailment, not_entailment)
RTE_INSTRUCTION = "Does the premise imply the hypothesis? Answer with yes or no.\nPremise: {}\nHypothesis: {}"
RTE_LABELS = ("yes", "no")
METHODS = ("unipelt", "lora", "prefix", "adapter")


def read_sst2(split: str) -> list[tuple[str, int]]:
    lines = (GLUE / "SST-2" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    rows = []
    for line in lines:
        sentence, label = line.rsplit("\t", 1)
        rows.append((sentence.strip(), int(label)))
    return rows


def read_rte(split: str) -> list[tuple[str, int]]:
    """(prompt, label) rows of RTE; label 0 = entailment ("yes"), 1 = not_entailment ("no")."""
    lines = (GLUE / "RTE" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    rows = []
    for line in lines:
        _, premise, hypothesis, label = line.split("\t")
        rows.append((RTE_INSTRUCTION.format(premise.strip(), hypothesis.strip()), int(label != "entailment")))
    return rows


def chat(sentence: str, label: int) -> dict[str, str]:
    if TASK == "rte":
        return {"prompt": sentence, "response": RTE_LABELS[label]}
    return {"prompt": INSTRUCTION.format(sentence), "response": LABELS[label]}


TASK = "sst2"


def labels() -> tuple[str, str]:
    return RTE_LABELS if TASK == "rte" else LABELS


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def phase_data(args: argparse.Namespace) -> None:
    """train.jsonl: a seeded pool of SST-2 train (K + validation per seed are drawn from it by the trainer);
    test.jsonl: the first --test rows of a seeded shuffle of SST-2 dev."""
    import random

    read = read_rte if TASK == "rte" else read_sst2
    train = read("train")
    dev = read("dev")
    random.Random(0).shuffle(train)
    random.Random(0).shuffle(dev)
    write_jsonl(OUT / "train.jsonl", [chat(*r) for r in train[: args.pool]])
    write_jsonl(OUT / "test.jsonl", [chat(*r) for r in dev[: args.test]])


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def phase_zeroshot(args: argparse.Namespace) -> None:
    target = OUT / "zeroshot.json"
    if target.is_file():
        return
    import torch

    from unipelt.backbones import load_base_model, load_tokenizer
    from unipelt.data.chat import read_chat_file
    from unipelt.inference.generation import Sampling, answer_metrics, generate_texts
    from unipelt.pretrained import resolve_model

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(resolve_model("smollm2"))
    model = load_base_model("smollm2", "causal-lm", pad_token_id=tokenizer.pad_token_id).eval()
    test = read_chat_file(OUT / "test.jsonl")
    start = time.time()
    generated = generate_texts(model, tokenizer, test, Sampling(max_new_tokens=8), batch_size=16)
    scores = answer_metrics(generated, test, list(labels()))
    _save_json(
        target,
        {**scores, "n": len(test), "seconds": round(time.time() - start, 1), "examples": generated[:20]},
    )


def phase_train(args: argparse.Namespace) -> None:
    from unipelt.training import TrainConfig, train

    for seed in args.seeds:
        for method in args.methods:
            run_dir = OUT / "runs" / f"k{args.k}" / method / f"seed-{seed}"
            if (run_dir / "metrics.json").is_file():
                continue
            config = TrainConfig(
                output_dir=str(run_dir),
                model="smollm2",
                method=method,
                task=None,
                task_type="causal-lm",
                train_file=str(OUT / "train.jsonl"),
                test_file=str(OUT / "test.jsonl"),
                answer_choices=",".join(labels()),
                max_new_tokens=8,
                k=args.k,
                n_valid=args.n_valid,
                seed=seed,
                max_length=256 if TASK == "rte" else 128,
                epochs=args.epochs,
                batch_size=8,
                eval_batch_size=16,
                patience=100,
                threads=args.threads,
                logging_steps=10,
                retention="facts" if args.retention else None,
            )
            print(f"training {method} seed {seed} -> {run_dir}", flush=True)
            train(config, resume=(run_dir / "config.json").is_file())


def _training_model_and_batch(method: str, checkpointing: bool):
    """SmolLM2 with ``method`` in training mode (everything trainable for ``ft``) and the fixed batch of the
    first 8 training chats that the cost and saved-bytes phases measure one step on."""
    from unipelt.data.chat import ChatCollator, read_chat_file, tokenize_conversations
    from unipelt.training import TrainConfig
    from unipelt.training.run import build_model

    config = TrainConfig(model="smollm2", method=method, task=None, task_type="causal-lm")
    config.gradient_checkpointing = checkpointing
    model, unipelt, tokenizer = build_model(config)
    if unipelt is None:
        model.requires_grad_(True)
    model.train()
    chats = read_chat_file(OUT / "train.jsonl")[:8]
    return model, ChatCollator(tokenizer.pad_token_id)(list(tokenize_conversations(chats, tokenizer, 128)))


def _cost_child(method: str, checkpointing: bool, steps: int, threads: int) -> None:
    """One measurement in this (fresh) process: median optimizer-step time and the step's peak RSS."""
    import torch

    from benchmarks.machine import emit_child_result, measure_peak

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, batch = _training_model_and_batch(method, checkpointing)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)

    def step() -> None:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    memory = measure_peak(step)  # the first step also allocates the optimizer state
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    emit_child_result(
        {
            "method": method,
            "gradient_checkpointing": checkpointing,
            "step_s_median": statistics.median(times),
            "step_s_all": [round(t, 3) for t in times],
            "peak_mb": round(memory["peak_mb"], 1),
            "memory_kind": memory["kind"],
            "trainable": sum(p.numel() for p in trainable),
            "batch_tokens": int(batch["input_ids"].numel()),
            "threads": threads,
        }
    )


def phase_saved(args: argparse.Namespace) -> None:
    """Bytes the forward pass keeps for the backward pass (activations), per method, with and without gradient
    checkpointing: counted with saved-tensor hooks, so it does not depend on the allocator or the machine's load.
    Tensors kept inside checkpointed layers go through the checkpoint's own hooks and are not kept, so they are
    (correctly) not counted."""
    import torch

    target = OUT / "saved.json"
    results = _load_json(target) or {}
    torch.set_num_threads(args.threads)
    for method in ("ft", *args.methods):
        for checkpointing in (False, True):
            key = f"{method}{'-gc' if checkpointing else ''}"
            if key in results:
                continue
            model, batch = _training_model_and_batch(method, checkpointing)
            seen: dict[int, int] = {}

            def pack(tensor: torch.Tensor, seen: dict[int, int] = seen) -> torch.Tensor:
                storage = tensor.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()  # a storage shared by several saves counts once
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = model(**batch).loss
            weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
            saved = sum(n for ptr, n in seen.items() if ptr not in weights)
            del loss
            results[key] = {
                "method": method,
                "gradient_checkpointing": checkpointing,
                "saved_for_backward_mb": round(saved / 2**20, 1),
                "batch_tokens": int(batch["input_ids"].numel()),
            }
            _save_json(target, results)
            print(key, results[key], flush=True)


def phase_cost(args: argparse.Namespace) -> None:
    from benchmarks.machine import child_env, run_json_child

    target = OUT / "cost.json"
    results = _load_json(target) or {}
    for method in ("ft", *args.methods):
        for checkpointing in (False, True):
            key = f"{method}{'-gc' if checkpointing else ''}"
            if key in results:
                continue
            argv = [sys.executable, "-m", __spec__.name, "cost-child", method, str(int(checkpointing))]
            argv += ["--steps", str(args.steps), "--threads", str(args.threads)]
            print(f"cost {key}", flush=True)
            results[key] = run_json_child(argv, timeout=1800, env=child_env())
            _save_json(target, results)


def _tokens_per_second(model, tokenizer, prompt_ids, new_tokens: int, repeats: int) -> list[float]:
    import torch

    ids = torch.tensor([prompt_ids])
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    kwargs["pad_token_id"] = tokenizer.pad_token_id
    rates = []
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            rates.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - start))
    return rates


def phase_gen(args: argparse.Namespace) -> None:
    """Greedy generation of a fixed number of tokens from one prompt (batch 1, KV cache), base vs trained."""
    import torch

    from unipelt.data.chat import encode_prompt, read_chat_file
    from unipelt.inference.generation import ChatRun

    target = OUT / "gen.json"
    results = _load_json(target) or {}
    torch.set_num_threads(args.threads)
    conversation = read_chat_file(OUT / "test.jsonl")[0]
    for method in args.methods:
        run_dir = OUT / "runs" / f"k{args.k}" / method / f"seed-{args.seeds[0]}"
        if method in results:
            continue
        if (run_dir / "metrics.json").is_file():
            model, tokenizer = ChatRun(run_dir).load()
            modules = "trained run"
        else:  # the same operations run whatever the weights' values: freshly initialised modules time the same
            from unipelt.training import TrainConfig
            from unipelt.training.run import build_model

            config = TrainConfig(model="smollm2", method=method, task=None, task_type="causal-lm")
            model, _, tokenizer = build_model(config)
            model.eval()
            modules = "freshly initialised (no finished run)"
        model.base_model.config.use_cache = True
        prompt = encode_prompt(tokenizer, conversation)
        # base and trained interleaved, so load changes on the shared machine hit both alike
        base_rates, tuned_rates = [], []
        for _ in range(args.rounds):
            with model.disabled():
                base_rates += _tokens_per_second(model, tokenizer, prompt, args.new_tokens, 1)
            tuned_rates += _tokens_per_second(model, tokenizer, prompt, args.new_tokens, 1)
        entry = {
            "base_tok_s": statistics.median(base_rates),
            "tuned_tok_s": statistics.median(tuned_rates),
            "base_all": [round(r, 2) for r in base_rates],
            "tuned_all": [round(r, 2) for r in tuned_rates],
            "prompt_tokens": len(prompt),
            "modules": modules,
            "new_tokens": args.new_tokens,
        }
        entry["slowdown_pct"] = 100 * (1 - entry["tuned_tok_s"] / entry["base_tok_s"])
        if method == "lora":  # ungated LoRA folds into the weights: no cost left at inference
            model.merge()
            merged = []
            for _ in range(args.rounds):
                merged += _tokens_per_second(model, tokenizer, prompt, args.new_tokens, 1)
            entry["merged_tok_s"] = statistics.median(merged)
        results[method] = entry
        _save_json(target, results)


def _retention_cell(runs: list[dict]) -> str:
    """Facts kept of those the base model answers, per seed ("-" for a run measured without --retention)."""
    cells = [f"{r['retention']['kept']}/{r['retention']['base_correct']}" for r in runs if "retention" in r]
    return " / ".join(cells) if cells else "-"


def phase_report(args: argparse.Namespace) -> None:
    zero = _load_json(OUT / "zeroshot.json")
    print(f"{'RTE' if TASK == 'rte' else 'SST-2'} dev, greedy generation accuracy (K={args.k})\n")
    print(
        "| method | seeds | test accuracy per seed | mean ± std | no-choice answers | retention | train s/run "
        "| steps |"
    )
    print("|---|---|---|---|---|---|---|---|")
    if zero:
        print(
            f"| SmolLM2 zero-shot | - | {100 * zero['accuracy']:.2f} | - | {100 * zero['no_choice']:.1f}% | - | - "
            "| - |"
        )
    for method in args.methods:
        runs = []
        for seed in args.seeds:
            metrics = _load_json(OUT / "runs" / f"k{args.k}" / method / f"seed-{seed}" / "metrics.json")
            if metrics:
                runs.append(metrics)
        if not runs:
            continue
        acc = [100 * r["test"]["accuracy"] for r in runs]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        none = statistics.fmean(100 * r["test"]["no_choice"] for r in runs)
        secs = statistics.fmean(r["train_seconds"] for r in runs)
        seeds = ",".join(str(r["seed"]) for r in runs)
        per_seed = " / ".join(f"{a:.2f}" for a in acc)
        print(
            f"| {method} | {seeds} | {per_seed} | {statistics.fmean(acc):.2f} ± {spread:.2f} | {none:.1f}% | "
            f"{_retention_cell(runs)} | {secs:.0f} | {runs[0]['steps']} |"
        )
    cost = _load_json(OUT / "cost.json")
    if cost:
        print("\n| method | grad. checkpointing | step s (median) | peak MB (step) | trainable |")
        print("|---|---|---|---|---|")
        for r in cost.values():
            print(
                f"| {r['method']} | {'yes' if r['gradient_checkpointing'] else 'no'} | {r['step_s_median']:.2f} | "
                f"{r['peak_mb']:.0f} | {r['trainable']:,} |"
            )
    gen = _load_json(OUT / "gen.json")
    if gen:
        print("\n| method | base tok/s | with trained modules tok/s | slowdown | merged tok/s |")
        print("|---|---|---|---|---|")
        for method, r in gen.items():
            merged = f"{r['merged_tok_s']:.1f}" if "merged_tok_s" in r else "-"
            print(
                f"| {method} | {r['base_tok_s']:.1f} | {r['tuned_tok_s']:.1f} | {r['slowdown_pct']:.1f}% | {merged} |"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        epilog="Time: zero-shot ~2.5 min; a run 5-7 min of training plus ~5 min of test generation on 2 cores; the full protocol (4 methods x 3 seeds) most of a day.",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "phase",
        choices=["data", "zeroshot", "train", "cost", "saved", "gen", "report", "all", "cost-child"],
    )
    parser.add_argument("child", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--n-valid", type=int, default=100)
    parser.add_argument("--pool", type=int, default=4000, help="SST-2 train rows written to train.jsonl")
    parser.add_argument("--test", type=int, default=872, help="SST-2 dev rows to test on (872 = all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="cost: timed steps after the first")
    parser.add_argument("--rounds", type=int, default=5, help="gen: interleaved timing rounds")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--task", choices=["sst2", "rte"], default="sst2", help="rte: yes/no entailment")
    parser.add_argument(
        "--retention",
        action="store_true",
        help="train: each run also measures retention of the packaged facts",
    )
    args = parser.parse_args(argv)
    global TASK, OUT
    TASK = args.task
    if TASK == "rte":
        OUT = Path(os.environ.get("LLM_RTE_OUT", HERE / "out" / "llm_rte"))
    if args.phase == "cost-child":
        method, checkpointing = args.child
        _cost_child(method, bool(int(checkpointing)), args.steps, args.threads)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    if args.phase in ("data", "all") and not (OUT / "test.jsonl").is_file():
        phase_data(args)
    for name, phase in (
        ("zeroshot", phase_zeroshot),
        ("train", phase_train),
        ("cost", phase_cost),
        ("saved", phase_saved),
        ("gen", phase_gen),
    ):
        if args.phase in (name, "all"):
            phase(args)
    if args.phase in ("report", "all"):
        phase_report(args)


if __name__ == "__main__":
    main()
