"""Search spaces for ``unipelt tune``: which hyper-parameters to search, over which ranges, and where each lands.

A space is a mapping from a hyper-parameter name to one of

* a range ``{low: 1.0e-4, high: 3.0e-3, log: true}`` (floats; ``type: int`` or integer bounds give integers,
  ``step`` a grid),
* a list of choices ``{choices: [4, 8, 16]}``,
* a fixed value (anything else), which every trial uses.

Names are :class:`~unipelt.training.TrainConfig` fields (``lr``, ``gate_penalty_weight``, ``gate_init_std``,
...), :class:`~unipelt.config.UniPELTConfig` fields (``lora_rank``, ``prefix_length``, ``adapter_reduction``,
``router_temperature``, ...; they go into the run's ``unipelt`` overrides), or ``gate_warmup``: the gate
warm-up as a fraction of the run's optimizer steps, so one range fits any data size (it becomes
``gate_warmup_steps``). Files are YAML or JSON; mistakes (an unknown name, an empty range) are named in one
line before any trial starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipelt.config import UniPELTConfig
from unipelt.errors import UniPELTError
from unipelt.methods import get_method
from unipelt.training.config import TrainConfig

# TrainConfig fields that make sense to search (data, paths and bookkeeping fields do not).
TRAIN_PARAMETERS = (
    "lr",
    "lr_gates",
    "lr_head",
    "lr_prefix",
    "lr_backbone",
    "weight_decay",
    "warmup_ratio",
    "scheduler",
    "max_grad_norm",
    "batch_size",
    "epochs",
    "gate_warmup_steps",
    "gate_penalty",
    "gate_penalty_weight",
    "gate_init_std",
    "backbone_dropout",
)
WARMUP_FRACTION = "gate_warmup"
_UNIPELT_SKIP = {"modules", "lora_targets", "head_modules", "preset", "options"}


def unipelt_parameters() -> tuple[str, ...]:
    """UniPELTConfig fields with a single value (sizes, gate settings) that a search can set."""
    return tuple(f.name for f in dataclasses.fields(UniPELTConfig) if f.name not in _UNIPELT_SKIP)


def known_parameters() -> tuple[str, ...]:
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return (
        *(name for name in TRAIN_PARAMETERS if name in train_fields),
        WARMUP_FRACTION,
        *unipelt_parameters(),
    )


@dataclass(frozen=True)
class Parameter:
    """One searched hyper-parameter: a float or int range, a list of choices, or a fixed value."""

    name: str
    kind: str  # float | int | choice | fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def suggest(self, trial: Any) -> Any:
        """This parameter's value for an Optuna trial (the trial records it)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        return self.value

    def describe(self) -> dict[str, Any]:
        """The JSON form a space file would use."""
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        if self.kind == "fixed":
            return {"value": self.value}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.kind == "int":
            out["type"] = "int"
        if self.step is not None:
            out["step"] = self.step
        return out


def _number(name: str, key: str, value: Any) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UniPELTError(f"search space: {name}.{key} must be a number, got {value!r}")
    return value


def parse_parameter(name: str, spec: Any) -> Parameter:
    """One entry of a space file as a :class:`Parameter`, with a one-line error naming what is wrong."""
    if name not in known_parameters():
        raise UniPELTError(
            f"search space: unknown hyper-parameter {name!r}; known: {', '.join(known_parameters())}"
        )
    if not isinstance(spec, dict) or not ({"low", "high", "choices"} & set(spec)):
        if isinstance(spec, dict) and set(spec) == {"value"}:
            spec = spec["value"]
        elif isinstance(spec, dict):
            raise UniPELTError(f"search space: {name} needs low and high, or choices, or a fixed value")
        return Parameter(name, "fixed", value=spec)
    stray = set(spec) - {"low", "high", "log", "step", "type", "choices"}
    if stray:
        raise UniPELTError(f"search space: {name} has unknown key(s) {', '.join(sorted(stray))}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UniPELTError(f"search space: {name} has an empty list of choices")
        return Parameter(name, "choice", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise UniPELTError(f"search space: {name} needs both low and high")
    low, high = _number(name, "low", spec["low"]), _number(name, "high", spec["high"])
    log = bool(spec.get("log", False))
    step = _number(name, "step", spec["step"]) if spec.get("step") is not None else None
    kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise UniPELTError(f"search space: {name}.type must be int or float, got {kind!r}")
    if not low < high:
        raise UniPELTError(f"search space: {name} has an empty range (low {low} is not below high {high})")
    if log and low <= 0:
        raise UniPELTError(f"search space: {name} is on a log scale, so low must be positive, got {low}")
    if log and step is not None:
        raise UniPELTError(f"search space: {name} cannot have both log and step")
    return Parameter(name, kind, low=low, high=high, log=log, step=step)


def parse_space(data: Any, source: str = "search space") -> list[Parameter]:
    if not isinstance(data, dict) or not data:
        raise UniPELTError(f"{source}: expected a non-empty mapping of hyper-parameter names to ranges")
    return [parse_parameter(str(name), spec) for name, spec in data.items()]


def load_space(path: str | Path) -> list[Parameter]:
    """A space file (``.yaml``/``.yml`` or ``.json``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise UniPELTError(f"cannot read search space {path}: {error.strerror or error}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise UniPELTError(
                f"search space {path} is not valid YAML: {str(error).splitlines()[0]}"
            ) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UniPELTError(f"search space {path} is not valid JSON: {error}") from None
    return parse_space(data, str(path))


def default_space(method: str, overrides: dict[str, Any] | None = None) -> list[Parameter]:
    """A space per method (:meth:`unipelt.methods.Method.search_space`; ``overrides``: the run's ``--set``).

    The learning rate around its default; gated methods add the gate penalty (kind and weight 1e-6..1e-2),
    the gate initialisation std (1e-3..0.1), the gate warm-up (0..30 % of the steps) and, for the softmax
    router, its temperature (0.5..5); each sub-module adds its size (LoRA rank, adapter reduction, prefix
    length).
    """
    return parse_space(get_method(method).search_space(overrides))


def apply_values(config: TrainConfig, values: dict[str, Any], train_examples: int) -> TrainConfig:
    """``config`` with one trial's values: TrainConfig fields set, UniPELT fields merged into ``unipelt``, and
    the warm-up fraction turned into steps of this run (``train_examples`` sizes an epoch)."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    changes: dict[str, Any] = {}
    unipelt = dict(config.unipelt)
    for name, value in values.items():
        if name == WARMUP_FRACTION:
            continue
        if name in train_fields and name in TRAIN_PARAMETERS:
            changes[name] = value
        else:
            unipelt[name] = value
    config = dataclasses.replace(config, **changes, unipelt=unipelt)
    if WARMUP_FRACTION in values:
        steps = total_steps(config, train_examples)
        config = dataclasses.replace(config, gate_warmup_steps=int(round(values[WARMUP_FRACTION] * steps)))
    return config


def total_steps(config: TrainConfig, train_examples: int) -> int:
    """Optimizer steps of a run (the Trainer's own count: a partial last batch is a step)."""
    if config.max_steps and config.max_steps > 0:
        return config.max_steps
    return max(1, math.ceil(math.ceil(train_examples / config.batch_size) * config.epochs))
