"""Causal-LM runs served on ONE frozen backbone: the tasks, prompts and limits the OpenAI-compatible routes use.

Every causal-LM run trained with a UniPELT method on one base model only adds its task modules; the backbone
is loaded once, each run's checkpoint becomes a named task, and the plain base model answers under its own
name. One :class:`~unipelt.inference.scheduler.Scheduler` owns the model and batches all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipelt.data.chat import Conversation, check_chat_template, encode_prompt, parse_conversation
from unipelt.errors import UniPELTError
from unipelt.inference.engine import share_backbone
from unipelt.inference.scheduler import Params, Scheduler
from unipelt.inference.served_tasks import InputError, default_name, run_score, split_name, unique_names
from unipelt.kinds import kind_of_run
from unipelt.training.run_files import read_labels


@dataclass
class ChatTask:
    """One served causal-LM run."""

    name: str
    source: str
    method: str
    metric: str | None
    score: float | None


def base_model_name(model: str) -> str:
    """The name the plain base model is served under: the run's ``--model`` (a folder's own name for a path)."""
    path = Path(model)
    return path.name if len(path.parts) > 1 or path.is_dir() else model


class GenerationEngine:
    """Loads causal-LM runs of one base model as tasks of one model and starts their scheduler."""

    def __init__(
        self,
        specs: Sequence[str | Path],
        max_rows: int = 16,
        max_step_tokens: int = 512,
        device: Any = None,
        backbone: Any = None,
    ) -> None:
        """``backbone``: a Transformers model of the same base (the server's classification or tagging tasks)
        whose backbone weights the causal LM then uses, the very same tensors, so the base is in memory once."""
        from unipelt.backbones import load_base_model, load_tokenizer
        from unipelt.inference.generation import ChatRun
        from unipelt.methods import get_method
        from unipelt.model import UniPELTModel
        from unipelt.pretrained import resolve_model

        if not specs:
            raise UniPELTError("give at least one causal-LM run folder to serve")
        named = [split_name(str(s)) for s in specs]
        runs = [ChatRun(folder) for _, folder in named]
        for run in runs:
            if not get_method(run.config.method).adds_modules:
                raise UniPELTError(
                    f"{run.folder} is a full fine-tuning run: it has its own backbone and cannot share one; "
                    "serve runs trained with a UniPELT method"
                )
        first = runs[0]
        base_path = Path(resolve_model(first.config.model)).resolve()
        for run in runs[1:]:
            other = Path(resolve_model(run.config.model)).resolve()
            if other != base_path:
                raise UniPELTError(
                    f"{run.folder} was trained on {run.config.model!r} ({other}) but {first.folder} on "
                    f"{first.config.model!r} ({base_path}); one server shares one backbone"
                )
        self.tokenizer = load_tokenizer(first.folder / "tokenizer", local=True)
        head = kind_of_run(read_labels(first.folder)).head  # the run's own LM head class
        base = load_base_model(first.config.model, head, pad_token_id=self.tokenizer.pad_token_id)
        if backbone is not None:
            share_backbone(backbone, base)
        if device is not None:
            base = base.to(device)
        self.model = UniPELTModel(base)
        names = unique_names([name or default_name(r.config, r.folder) for (name, _), r in zip(named, runs)])
        self.tasks: dict[str, ChatTask] = {}
        for name, run in zip(names, runs):
            self.model.load_task(name, run.folder / "checkpoint")
            self.model.eject_prefix_mlp(name)  # inference keeps only the prefix vectors it produces
            metric, score = run_score(run.folder)
            self.tasks[name] = ChatTask(name, str(run.folder), run.config.method, metric, score)
        self.model.eval()
        self.base_name = base_model_name(first.config.model)
        if self.base_name in self.tasks:
            self.base_name = f"{self.base_name}-base"
        config = base.config
        self.context = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        self.stop_ids = frozenset(_stop_ids(self.tokenizer, base))
        self.scheduler = Scheduler(self.model, max_rows, max_step_tokens)

    @property
    def models(self) -> list[str]:
        """Every servable model name: the tasks, then the plain base model."""
        return [*self.tasks, self.base_name]

    def task_of(self, model: str) -> str | None:
        """The task a request's ``model`` names (None: the plain base model); an unknown name is a 404."""
        if model in self.tasks:
            return model
        if model == self.base_name:
            return None
        raise InputError(
            f"The model {model!r} does not exist; this server has: {', '.join(self.models)}", status=404
        )

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of a chat through the tokenizer's chat template, ready to be continued."""
        try:
            check_chat_template(self.tokenizer)
            conversation: Conversation = parse_conversation({"messages": messages}, "messages", False)
            return encode_prompt(self.tokenizer, conversation)
        except UniPELTError as error:
            raise InputError(str(error)) from None

    def text_prompt(self, prompt: str) -> list[int]:
        """Token ids of a plain completion prompt (with the tokenizer's own special tokens)."""
        return list(self.tokenizer(prompt)["input_ids"])

    def params(
        self,
        prompt: list[int],
        max_tokens: int | None,
        temperature: float,
        top_p: float,
        seed: int | None,
        default_max: int | None = None,
        ignore_eos: bool = False,
    ) -> Params:
        """A request's generation settings; a prompt that leaves no room in the context is a 400."""
        room = None if self.context is None else self.context - len(prompt)
        if room is not None and (room < 1 or (max_tokens is not None and max_tokens > room)):
            asked = f" and max_tokens asks for {max_tokens} more" if max_tokens is not None else ""
            raise InputError(
                f"This model's maximum context length is {self.context} tokens; the prompt has "
                f"{len(prompt)} tokens{asked}. Shorten the prompt or ask for fewer tokens."
            )
        limit = max_tokens if max_tokens is not None else default_max
        if limit is None or (room is not None and limit > room):
            limit = room if room is not None else 256
        return Params(limit, frozenset() if ignore_eos else self.stop_ids, temperature, top_p, seed)

    def close(self) -> None:
        self.scheduler.close()


def _stop_ids(tokenizer: Any, model: Any) -> set[int]:
    """Tokens that end an answer: the tokenizer's end of sequence and padding, and the generation config's."""
    found = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found.update(configured if isinstance(configured, list) else [configured])
    return {int(t) for t in found if t is not None}
