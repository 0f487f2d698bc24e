"""The base model and tokenizer for a task, built the same way by training, inference, counting and benchmarks.

Every user of a base model needs the same thing: a Transformers sequence classifier whose head is sized from the
task (class names, or one regression output), a tokenizer that has a padding token, and a model config that knows
that token (decoder-only models find the last real token through it). Doing this in one place keeps a run that
is evaluated later on exactly the head shape it was trained with, and turns a model that cannot be loaded into
one :class:`~unipelt.errors.UniPELTError` instead of a Transformers traceback.

Transformers is imported inside the functions, so this module stays as light as :mod:`unipelt.pretrained` (the
cost scripts use it from a virtual environment with an older transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from unipelt.errors import UniPELTError
from unipelt.pretrained import resolve_model

if TYPE_CHECKING:
    import torch

TaskKind = Literal[
    "classification", "regression", "token-classification", "causal-lm", "image-classification"
]
Init = Literal["pretrained", "random", "meta"]


def head_kwargs(
    task_kind: TaskKind = "classification",
    labels: Sequence[str] | None = None,
    num_labels: int | None = None,
) -> dict[str, Any]:
    """Model-config keywords that size and name the head: one output for regression, else one per class.

    Class names give ``id2label``/``label2id`` too; with neither names nor ``num_labels`` the model's own
    config decides (a folder saved with a head keeps its size).
    """
    if task_kind == "causal-lm":
        if labels is not None or num_labels is not None:
            raise UniPELTError("a causal-lm task keeps the model's own LM head: it takes no labels")
        return {}
    if task_kind == "regression":
        if labels is not None or num_labels not in (None, 1):
            raise UniPELTError("a regression head has one output and no label names")
        return {"num_labels": 1, "problem_type": "regression"}
    if task_kind not in ("classification", "token-classification", "image-classification"):
        raise UniPELTError(
            "task_kind must be 'classification', 'regression', 'token-classification' or "
            f"'image-classification', not {task_kind!r}"
        )
    if labels is None:
        return {} if num_labels is None else {"num_labels": num_labels}
    names = list(labels)
    if num_labels is not None and num_labels != len(names):
        raise UniPELTError(f"num_labels={num_labels} but {len(names)} label names were given: {names}")
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
    }


def load_base_model(
    path_or_name: str | Path,
    task_kind: TaskKind = "classification",
    labels: Sequence[str] | None = None,
    num_labels: int | None = None,
    *,
    init: Init = "pretrained",
    pad_token_id: int | None = None,
) -> torch.nn.Module:
    """A sequence classifier for ``task_kind`` on the model ``path_or_name`` (minilm, mpnet, a folder, a Hub name);
    a token classifier (one output per token: ``...ForTokenClassification``) for ``"token-classification"``. A
    decoder-only model tags each token from its causal states, i.e. from the words before it only. For
    ``"causal-lm"`` the model with its own (pretrained, tied) LM head: ``...ForCausalLM``.

    ``init``: ``"pretrained"`` loads the weights (a head of another size is replaced by a fresh one: that is the
    head we train); ``"random"`` builds the model from its config with random weights (costs do not depend on
    weight values); ``"meta"`` builds it on the meta device, shapes only, for counting parameters of any size.
    ``pad_token_id`` is written into the model config when the config has none.
    """
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    if init not in ("pretrained", "random", "meta"):
        raise UniPELTError(f"init must be 'pretrained', 'random' or 'meta', not {init!r}")
    kwargs = head_kwargs(task_kind, labels, num_labels)
    auto = _auto_class(task_kind)
    path = resolve_model(str(path_or_name))
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected: that is the head we train
    try:
        check_model_kind(AutoConfig.from_pretrained(path), auto, path_or_name, task_kind)
        if init == "pretrained":
            model = auto.from_pretrained(path, ignore_mismatched_sizes=True, **kwargs)
        else:
            import contextlib

            import torch

            config = AutoConfig.from_pretrained(path, **kwargs)
            with torch.device("meta") if init == "meta" else contextlib.nullcontext():
                model = auto.from_config(config)
    except (OSError, ValueError) as error:
        raise UniPELTError(f"cannot load model {str(path_or_name)!r} from {path}: {error}") from error
    if pad_token_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


def _auto_class(task_kind: str) -> Any:
    """The Transformers Auto class that builds a model for ``task_kind``."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    return {
        "image-classification": AutoModelForImageClassification,
        "token-classification": AutoModelForTokenClassification,
        "causal-lm": AutoModelForCausalLM,
    }.get(task_kind, AutoModelForSequenceClassification)


def check_model(path_or_name: str | Path, task_kind: TaskKind = "classification") -> None:
    """Refuse a model unipelt cannot train for ``task_kind`` from its config alone, with the message
    ``unipelt params`` gives, before its tokenizer or weights are read (which would fail first, and blame
    them: a vision model has no text tokenizer, a sequence-to-sequence folder may hold other weight files)."""
    from transformers import AutoConfig

    from unipelt.inject.architectures import architecture_for

    path = resolve_model(str(path_or_name))
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise UniPELTError(f"cannot load model {str(path_or_name)!r} from {path}: {error}") from error
    check_model_kind(config, _auto_class(task_kind), path_or_name, task_kind)
    architecture_for(config)


def check_model_kind(config: Any, auto: Any, name: str | Path, task_kind: str) -> None:
    """Refuse, in one line that says what is supported, a model the task's Auto class cannot build (a vision,
    audio or sequence-to-sequence model), instead of Transformers' list of 150 configuration classes."""
    from transformers.models.auto import modeling_auto as names

    mapping = getattr(auto, "_model_mapping", None)  # config class -> model class, as from_config uses it
    if mapping is None or type(config) in mapping:
        return
    from unipelt.errors import UnsupportedModelError
    from unipelt.inject.architectures import ARCHITECTURES

    model_type = getattr(config, "model_type", "?")
    kinds = (
        ("an image model", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
        ("a vision model", "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES"),
        ("an audio model", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES"),
        ("a speech model", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"),
        ("a sequence-to-sequence model", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
    )
    kind = next((text for text, table in kinds if model_type in getattr(names, table, {})), "a model")
    if kind == "an image model" and model_type in ARCHITECTURES:
        raise UnsupportedModelError(
            f"{str(name)!r} is an image model ({model_type}): train it on images with --task-type "
            "image-classification (a folder of class folders, or a table of image paths)"
        )
    raise UnsupportedModelError(
        f"{str(name)!r} is {kind} ({model_type}), which unipelt cannot use for {task_kind}: it trains text "
        f"encoders, decoder-only language models and image encoders of these types: "
        f"{', '.join(sorted(ARCHITECTURES))}"
    )


def natural_kind(path_or_name: str | Path) -> TaskKind:
    """The head a model folder is made for when nothing else says: image classification for image models
    (ViT, DeiT), else sequence classification."""
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(resolve_model(str(path_or_name)))
    image = type(config) in AutoModelForImageClassification._model_mapping
    return "image-classification" if image else "classification"


def load_tokenizer(path: str | Path, local: bool = False) -> Any:
    """The tokenizer saved in ``path`` (a folder or Hub name as ``from_pretrained`` takes it, e.g. from
    :func:`~unipelt.pretrained.resolve_model`), with the end-of-sequence token as padding when it has none.
    ``local``: ``path`` is a folder of a run, never a Hub name: a missing one fails at once, without the Hub."""
    from transformers import AutoTokenizer

    if local and not Path(path).is_dir():
        raise UniPELTError(f"{path} is missing: the run's tokenizer folder was deleted")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways, deep inside tokenizers
        lines = str(error).strip().splitlines()
        detail = lines[0] if lines else type(error).__name__
        damaged = "; its files are damaged or not a tokenizer's" if Path(path).is_dir() else ""
        raise UniPELTError(f"cannot load a tokenizer from {path} ({detail}){damaged}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise UniPELTError(
            f"the tokenizer in {path} has neither a padding nor an end-of-sequence token; its "
            "tokenizer_config.json is damaged or it is not the model's tokenizer"
        )
    return tokenizer
