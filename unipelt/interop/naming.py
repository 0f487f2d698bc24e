"""Where a task's modules sit in the base model, by the full module paths PEFT names them with.

PEFT addresses a module by its dotted path in the model it wraps (``bert.encoder.layer.0.attention.self.query``)
and selects modules with ``target_modules``: a list of names, each matching a path equal to it or ending in
``.name``, or one regular expression that must match a whole path. A list of short names is what servers such
as vLLM expect, but it can catch more than was meant (``output.dense`` also ends ``attention.output.dense``),
so :func:`target_expression` uses short names only when they select exactly the wanted paths, and an exact
regular expression otherwise.
"""

from __future__ import annotations

import re

from torch import nn

from unipelt.errors import UniPELTError
from unipelt.inject.architectures import Architecture, layer_list, parse_projection, role_path


def module_paths(base: nn.Module) -> dict[int, str]:
    """id(module) -> its dotted path in ``base`` (the Transformers model PEFT wraps)."""
    return {id(module): name for name, module in base.named_modules()}


def role_paths(base: nn.Module, arch: Architecture, role: str) -> list[str]:
    """The full path of ``role`` (query, key, value, output, ffn_input, ffn_output) in every layer.

    A fused projection (GPT-2's q/k/v Conv1D) has no per-role module, which PEFT would need: refused."""
    path, _, parts = parse_projection(role_path(arch, role))
    if parts != 1:
        raise UniPELTError(
            f"the {role} projection of this architecture is a slice of the fused {path!r}; PEFT adapts whole "
            "modules, so a module on one slice has no PEFT form"
        )
    ids = module_paths(base)
    return [ids[id(layer.get_submodule(path))] for layer in layer_list(base.base_model, arch)]


def _list_matches(names: list[str], path: str) -> bool:
    return any(path == name or path.endswith(f".{name}") for name in names)


def target_expression(wanted: list[str], every_path: list[str]) -> list[str] | str:
    """PEFT ``target_modules`` selecting exactly ``wanted`` among ``every_path``: short names if they can,
    else one regular expression listing the paths."""
    wanted_set = set(wanted)
    chosen: list[str] = []
    for path in wanted:
        parts = path.split(".")
        for length in range(1, len(parts) + 1):
            name = ".".join(parts[-length:])
            caught = {p for p in every_path if _list_matches([name], p)}
            if caught <= wanted_set:
                if name not in chosen:
                    chosen.append(name)
                break
    if {p for p in every_path if _list_matches(chosen, p)} == wanted_set:
        return sorted(chosen)
    return exact_regex(wanted)


def exact_regex(paths: list[str]) -> str:
    """A regular expression whose full matches are exactly ``paths`` (layer numbers folded where they can be)."""
    by_shape: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        match = re.match(r"^(.*?\.)(\d+)(\..*)$", path)
        if match is None:
            by_shape.setdefault((path, ""), []).append("")
        else:
            by_shape.setdefault((match[1], match[3]), []).append(match[2])
    pieces = []
    for (head, tail), numbers in by_shape.items():
        if numbers == [""]:
            pieces.append(re.escape(head))
        else:
            pieces.append(f"{re.escape(head)}(?:{'|'.join(sorted(set(numbers), key=int))}){re.escape(tail)}")
    return "^(?:" + "|".join(sorted(pieces)) + ")$"


def select(expression: list[str] | str, every_path: list[str]) -> list[str]:
    """The paths a PEFT ``target_modules`` value selects (PEFT's own matching rule for lists and regexes)."""
    if isinstance(expression, str):
        return [p for p in every_path if re.fullmatch(expression, p)]
    return [p for p in every_path if _list_matches(list(expression), p)]
