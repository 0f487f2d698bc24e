"""The UniPELT configuration: one dataclass, presets with the paper's sizes, JSON in and out.

Why one flat dataclass and not one config per sub-module: the three sub-modules share the gate, the
gate pooling and the layer layout, and users override single fields from the command line
(``--lora-rank 4``). A flat record maps one-to-one onto flags and onto the JSON file saved with a
checkpoint, so a run can always be rebuilt from what it wrote.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from unipelt.errors import UniPELTError

GATES = ("sigmoid", "softmax", "none")
POOLINGS = ("auto", "mean", "token")
ACTIVATIONS = ("relu", "gelu", "tanh", "silu")


@dataclass
class UniPELTConfig:
    """What to add to a frozen model, and how big each part is.

    Defaults are the paper's UniPELT (APL): LoRA r=8 on query and value, prefix length 10 trained through a
    512-wide reparameterisation MLP, a bottleneck adapter of hidden/16, and one sigmoid gate per site.
    """

    lora: bool = True
    prefix: bool = True
    adapter: bool = True

    # Gates. "sigmoid" is the paper's gate; "softmax" a per-layer router over the enabled sub-modules;
    # "none" is the ungated ablation. Pooling "auto" means "mean" (mask-aware, one gate per example) for
    # encoders and "token" (one gate per token, which keeps decoders causal and KV-cache exact) for decoders.
    gate: str = "sigmoid"
    gate_pooling: str = "auto"
    router_hidden: int = 64
    router_temperature: float = 1.0

    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])

    prefix_length: int = 10
    prefix_reparam: bool = True
    prefix_hidden: int = 512

    adapter_size: int | None = None
    adapter_reduction: float = 16.0
    adapter_activation: str = "relu"

    # Task head (classifier, score, pooler, ...) stays trainable; list module names to override the table.
    train_head: bool = True
    head_modules: list[str] | None = None

    preset: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject values that would only fail later, deep inside a forward pass."""
        if self.gate not in GATES:
            raise UniPELTError(f"gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        if self.gate_pooling not in POOLINGS:
            raise UniPELTError(
                f"gate_pooling must be one of {', '.join(POOLINGS)}, got {self.gate_pooling!r}"
            )
        if self.adapter_activation not in ACTIVATIONS:
            raise UniPELTError(
                f"adapter_activation must be one of {', '.join(ACTIVATIONS)}, got {self.adapter_activation!r}"
            )
        for name in ("lora_rank", "prefix_length", "prefix_hidden", "router_hidden"):
            if int(getattr(self, name)) < 1:
                raise UniPELTError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.adapter_size is not None and self.adapter_size < 1:
            raise UniPELTError(f"adapter_size must be at least 1, got {self.adapter_size}")
        if self.adapter_reduction <= 0:
            raise UniPELTError(f"adapter_reduction must be positive, got {self.adapter_reduction}")
        if self.router_temperature <= 0:
            raise UniPELTError(f"router_temperature must be positive, got {self.router_temperature}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UniPELTError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora and not self.lora_targets:
            raise UniPELTError(
                "lora is on but lora_targets is empty; name at least one projection, e.g. query"
            )

    @property
    def modules(self) -> list[str]:
        """The enabled sub-modules in the router's fixed order."""
        return [name for name in ("lora", "prefix", "adapter") if getattr(self, name)]

    def adapter_bottleneck(self, hidden_size: int) -> int:
        """Adapter width: given directly, or hidden size / reduction factor (48 on BERT-base)."""
        if self.adapter_size is not None:
            return int(self.adapter_size)
        return max(1, int(hidden_size // self.adapter_reduction))

    def replace(self, **overrides: Any) -> UniPELTConfig:
        """A copy with some fields changed; unknown field names are an error, not silently dropped."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UniPELTError(
                f"unknown config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> UniPELTConfig:
        """One of the paper's variants, with any field overridden."""
        if name not in PRESETS:
            raise UniPELTError(f"unknown method {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], "preset": name}).replace(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UniPELTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UniPELTError(
                f"config has unknown field(s) {', '.join(unknown)}; is it from a newer unipelt?"
            )
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> UniPELTConfig:
        """Read a config from a JSON string or a file path."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            path = Path(source)
            if not path.is_file():
                raise UniPELTError(f"config file not found: {path}")
            text = path.read_text()
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise UniPELTError(f"config is not valid JSON: {error}") from error


# The paper's variants (Mao et al. 2022, Tables 1 and 3). Single methods are ungated, as in the paper.
PRESETS: dict[str, dict[str, Any]] = {
    "adapter": {"lora": False, "prefix": False, "adapter": True, "gate": "none"},
    "lora": {"lora": True, "prefix": False, "adapter": False, "gate": "none"},
    "prefix": {"lora": False, "prefix": True, "adapter": False, "gate": "none"},
    "unipelt-ap": {"lora": False, "prefix": True, "adapter": True, "gate": "sigmoid"},
    "unipelt": {"lora": True, "prefix": True, "adapter": True, "gate": "sigmoid"},
    "unipelt-router": {"lora": True, "prefix": True, "adapter": True, "gate": "softmax"},
    "ap-nogate": {"lora": False, "prefix": True, "adapter": True, "gate": "none"},
}
