"""``unipelt generate``: answers from a causal-LM run (or a plain chat model) through its chat template.

``--prompt TEXT`` streams the answer to the terminal token by token; ``--input FILE`` (JSON lines with
``prompt`` or ``messages``, as for training) writes one JSON line per conversation. Greedy by default;
``--temperature`` above 0 samples (with ``--top-p``). With a multi-task checkpoint ``--task`` picks whose
modules run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from unipelt.cli.common import add_device_flags, placement_of


def _model_and_tokenizer(source: str, task: str | None, where: Any) -> tuple[Any, Any, str | None]:
    """(model, tokenizer, task) from a run folder, or from a model name (minilm/smollm2/folder/GGUF) untrained."""
    from transformers.utils import logging as hf_logging

    from unipelt.errors import UniPELTError
    from unipelt.inference.generation import ChatRun

    hf_logging.disable_progress_bar()  # the answer streams to the terminal: no loading bars around it

    folder = Path(source)
    if (folder / "labels.json").is_file() or (folder / "checkpoint").is_dir():
        run = ChatRun(folder, where)
        model, tokenizer = run.load()
        return model, tokenizer, run.check_task(task)
    from unipelt.backbones import load_base_model, load_tokenizer
    from unipelt.pretrained import resolve_model

    if task is not None:
        raise UniPELTError(f"--task needs a run folder; {source} is a plain model")
    tokenizer = load_tokenizer(resolve_model(source))
    model = load_base_model(source, "causal-lm", pad_token_id=tokenizer.pad_token_id)
    return where.place(model).eval(), tokenizer, None


def run(args: argparse.Namespace) -> int:
    import torch

    from unipelt.data.chat import check_chat_template, parse_conversation, read_chat_file
    from unipelt.inference.generation import Sampling, context_limit, generate_ids, generate_texts, prompt_ids

    where = placement_of(args)
    torch.manual_seed(args.seed)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p)
    sampling.generate_kwargs()  # bad settings fail before the model loads
    conversations = (
        read_chat_file(args.input, need_response=False, encoding=args.encoding) if args.input else None
    )
    model, tokenizer, task = _model_and_tokenizer(args.run, args.task, where)
    check_chat_template(tokenizer)
    if conversations is None:
        from transformers import TextStreamer

        record = {"prompt": args.prompt, **({"system": args.system} if args.system else {})}
        conversation = parse_conversation(record, "--prompt", need_response=False)
        ids = prompt_ids(tokenizer, conversation, context_limit(model, tokenizer), args.max_new_tokens)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        generate_ids(model, tokenizer, [ids], sampling, task=task, streamer=streamer)
        return 0
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        for start in range(0, len(conversations), args.batch_size):
            part = conversations[start : start + args.batch_size]
            texts = generate_texts(model, tokenizer, part, sampling, task=task, batch_size=args.batch_size)
            for conversation, text in zip(part, texts):
                record: dict[str, Any] = {"messages": conversation.prompt_messages, "generated": text}
                if conversation.response is not None:
                    record["reference"] = conversation.response
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="generate answers with a causal-LM run (or a chat model)")
    p.add_argument(
        "run", help="run folder of `unipelt train --task-type causal-lm`, or a model (e.g. smollm2)"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one user message; the answer streams to the terminal")
    source.add_argument(
        "--input",
        help="JSON lines (a file, or - for standard input) with prompt or messages; one line out per line",
    )
    p.add_argument("--encoding", default="utf-8", help="text encoding of --input (default utf-8)")
    p.add_argument("--system", help="system message for --prompt")
    p.add_argument("--output", help="write the JSON lines of --input here (default: standard output)")
    p.add_argument("--task", help="a multi-task checkpoint: whose modules run")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy; above 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    p.add_argument("--batch-size", type=int, default=8)
    add_device_flags(p)
    p.set_defaults(func=run)
    return p
