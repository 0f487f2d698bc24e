"""A model card (README.md in the Hugging Face Hub's format) for a finished run folder or an export of it.

The YAML header is made by ``huggingface_hub``'s own ``ModelCardData`` (base model, ``library_name: unipelt``,
pipeline tag, tags, data sets, and the test metrics as a ``model-index`` with values); the body says what was
trained (method, modules, trainable parameters), on what (task, K, seeds), how well against the majority-class
baseline, and how to load it with unipelt and, for a PEFT export, with peft. Everything comes from the run's
own ``config.json``, ``metrics.json`` and checkpoint config, so a card can be written again at any time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unipelt.atomic import atomic_write_text

CARD = "README.md"
HUB_NAMES = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "mpnet": "sentence-transformers/all-mpnet-base-v2",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
PIPELINES = {
    "classification": "text-classification",
    "regression": "text-classification",
    "token-classification": "token-classification",
    "causal-lm": "text-generation",
}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _numbers(scores: Any) -> dict[str, float]:
    if not isinstance(scores, dict):
        return {}
    return {
        k: float(v)
        for k, v in scores.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "loss")
    }


def card_text(run: str | Path, peft_folder: str | Path | None = None) -> str:
    """The card of a run folder; with ``peft_folder``, the card of that PEFT export of it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    run = Path(run)
    config, metrics = _json(run / "config.json"), _json(run / "metrics.json")
    checkpoint = _json(run / "checkpoint" / "unipelt_config.json")
    model = str(config.get("model") or "unknown")
    base = HUB_NAMES.get(model.lower(), model)
    kind = str(metrics.get("task_type") or (checkpoint.get("task") or {}).get("kind") or "classification")
    task = str(config.get("task") or Path(str(config.get("train_file") or "own data")).name)
    glue = config.get("task") is not None and not config.get("train")
    test = _numbers(metrics.get("test"))
    results = [
        EvalResult(
            task_type=PIPELINES.get(kind, "text-classification"),
            dataset_type="nyu-mll/glue" if glue else "custom",
            dataset_name=f"GLUE {task.upper()}" if glue else task,
            dataset_config=task if glue else None,
            dataset_split="test",
            metric_type=name,
            metric_value=round(value, 4),
        )
        for name, value in sorted(test.items())
    ]
    data = ModelCardData(
        base_model=base,
        library_name="unipelt",
        pipeline_tag=PIPELINES.get(kind, "text-classification"),
        tags=list(
            dict.fromkeys(
                ["unipelt", str(config.get("method") or "unipelt")] + (["peft"] if peft_folder else [])
            )
        ),
        datasets=["nyu-mll/glue"] if glue else None,
        metrics=sorted(test) or None,
        model_name=f"{Path(model).name}-{task}-{config.get('method', 'unipelt')}",
        eval_results=results or None,
    )
    body = _body(run, config, metrics, checkpoint, task, kind, peft_folder)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _body(run: Path, config: dict, metrics: dict, checkpoint: dict, task: str, kind: str, peft: Any) -> str:
    lines = [
        f"# {config.get('model', 'model')} + {config.get('method', 'unipelt')} on {task}",
        "",
        "Trained with [unipelt](https://github.com/unipelt/unipelt): the base model stays frozen; only the "
        "modules below and the task head were trained.",
        "",
        *_method_lines(config, metrics, checkpoint),
        "",
        *_data_lines(config, metrics, task),
        "",
        "## Load it with unipelt",
        "",
        "```python",
        "from unipelt.inference.runs import Run",
        "",
        f'model, tokenizer = Run("{run.name}").load()',
        "```",
    ]
    if peft is not None:
        lines += _peft_usage(Path(peft), config, kind, (checkpoint.get("task") or {}).get("num_labels"))
    return "\n".join(lines) + "\n"


def _method_lines(config: dict, metrics: dict, checkpoint: dict) -> list[str]:
    """The card's method section: method, modules, gate, LoRA and prefix sizes, trainable parameters."""
    unipelt = checkpoint.get("unipelt") or config.get("resolved_unipelt") or {}
    modules = ", ".join(unipelt.get("modules") or []) or "none"
    params = metrics.get("parameters") or {}
    trainable = params.get("total_without_prefix_mlp")
    lines = [
        "## Method and modules",
        "",
        f"- method: `{config.get('method', 'unipelt')}`; modules: {modules}; gate: `{unipelt.get('gate', 'none')}`",
    ]
    if "lora" in (unipelt.get("modules") or []):
        lines.append(
            f"- LoRA rank {unipelt.get('lora_rank')}, alpha {unipelt.get('lora_alpha')}, targets "
            f"{', '.join(unipelt.get('lora_targets') or [])}"
        )
    if "prefix" in (unipelt.get("modules") or []):
        lines.append(f"- prefix length {unipelt.get('prefix_length')}")
    if trainable is not None:
        lines.append(
            f"- trainable parameters kept for inference: {trainable:,} (frozen base model: "
            f"{params.get('base_model', 0):,})"
        )
    return lines


def _data_lines(config: dict, metrics: dict, task: str) -> list[str]:
    """The card's data and test-results sections (against the majority class)."""
    baseline = _numbers((metrics.get("majority_class") or {}).get("test"))
    test = _numbers(metrics.get("test"))
    seeds = config.get("seeds") or ([config["seed"]] if config.get("seed") is not None else [])
    lines = [
        "## Data",
        "",
        f"- task: {task}; training examples: {metrics.get('train_examples', 'all')}"
        f" (K = {config.get('k') if config.get('k') is not None else 'all'}); validation examples: "
        f"{config.get('n_valid', 'n/a')}",
        f"- seed(s): {', '.join(map(str, seeds)) or 'n/a'}",
        "",
        "## Test results",
        "",
        "| metric | this model | majority class |",
        "|---|---|---|",
    ]
    for name, value in sorted(test.items()):
        majority = baseline.get(name)
        lines.append(f"| {name} | {value:.4f} | {'' if majority is None else f'{majority:.4f}'} |")
    if not test:
        lines.append("| (no test set) | | |")
    return lines


AUTO_CLASSES = {
    "causal-lm": ("AutoModelForCausalLM", ""),
    "token-classification": ("AutoModelForTokenClassification", ", num_labels=NUM_LABELS"),
}


def _peft_usage(folder: Path, config: dict, kind: str, num_labels: Any) -> list[str]:
    model = str(config.get("model") or "BASE")
    base = HUB_NAMES.get(model.lower(), model)
    two = (folder / "ia3").is_dir()
    auto, labels = AUTO_CLASSES.get(kind, ("AutoModelForSequenceClassification", ", num_labels=NUM_LABELS"))
    labels = labels.replace("NUM_LABELS", str(num_labels or "NUM_LABELS"))
    lines = [
        "",
        "## Load it with peft",
        "",
        "```python",
        "from peft import PeftModel",
        f"from transformers import {auto}",
        "",
        f'base = {auto}.from_pretrained("{base}"{labels})',
        'model = PeftModel.from_pretrained(base, "PATH_TO_THIS_FOLDER")',
    ]
    if two:
        lines.append('model = PeftModel.from_pretrained(model.merge_and_unload(), "PATH_TO_THIS_FOLDER/ia3")')
    lines.append("```")
    if two:
        lines.append(
            "\nPEFT holds one adapter type per model: the LoRA is merged first, then the IA3 adapter in `ia3/` "
            "scales the merged projections, which is the order unipelt applies them in."
        )
    return lines


def write_card(run: str | Path, folder: str | Path | None = None, peft: bool = False) -> Path:
    """Write the card of ``run`` as ``folder/README.md`` (default: the run folder itself)."""
    target = Path(folder or run) / CARD
    atomic_write_text(target, card_text(run, folder if peft else None))
    return target
