"""The UniPELT configuration: one dataclass, presets with the paper's sizes, JSON in and out.

Why one flat dataclass and not one config per sub-module: the sub-modules share the gate, the gate pooling
and the layer layout, and users override single fields from the command line (``--set lora_rank=4``). A flat
record maps one-to-one onto flags and onto the JSON file saved with a checkpoint, so a run can always be
rebuilt from what it wrote.

``modules`` lists the sub-modules by kind. The paper's three (lora, prefix, adapter) have their size fields
here; a module added later declares its own fields and defaults in its file (``PeftModule.options``) and they
travel in ``options`` (flattened into the JSON), so adding a module never edits this file. Configs written
before ``modules`` existed (``"lora": true, "prefix": true, "adapter": false``) are read as before.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from unipelt.errors import UniPELTError

GATES = ("sigmoid", "softmax", "concrete", "none")
POOLINGS = ("auto", "mean", "token")
INPUT_VIEWS = ("auto", "raw", "rms")  # what a gate or an adapter reads
PREFIX_FORMS = ("auto", "concat", "parallel")
# What a checkpoint written before a field existed was trained with, for fields whose "auto" default has since
# come to mean something else: gates and adapters that read the raw state, the paper's prefix.
LEGACY_VALUES = {"gate_input": "raw", "adapter_input": "raw", "prefix_form": "concat"}
ACTIVATIONS = ("relu", "gelu", "tanh", "silu")


@dataclass
class UniPELTConfig:
    """What to add to a frozen model, and how big each part is.

    Defaults are the paper's UniPELT (APL): LoRA r=8 on query and value, prefix length 10 trained through a
    512-wide reparameterisation MLP, a bottleneck adapter of hidden/16, and one sigmoid gate per site.
    """

    modules: list[str] = field(default_factory=lambda: ["lora", "prefix", "adapter"])

    # Gates. "sigmoid" is the paper's gate; "softmax" a per-layer router over the enabled sub-modules;
    # "concrete" a learnt input-independent hard-concrete switch per site (AutoPELT's module selection);
    # "none" is the ungated ablation. Pooling "auto" means "mean" (mask-aware, one gate per example) for
    # encoders and "token" (one gate per token, which keeps decoders causal and KV-cache exact) for decoders.
    gate: str = "sigmoid"
    gate_pooling: str = "auto"
    # What the sigmoid gates and the router read: "raw" (the paper's gate) or "rms" (the state divided by its
    # per-token RMS, with a width-independent small initial spread; unipelt.gates.normalise). "auto" is "rms"
    # for pre-norm architectures (decoders, whose residual stream reaches norms in the thousands) and "raw"
    # for post-norm encoders, which keep the paper's gate unchanged.
    gate_input: str = "auto"
    router_hidden: int = 64
    router_temperature: float = 1.0

    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])

    prefix_length: int = 10
    prefix_reparam: bool = True
    prefix_hidden: int = 512
    # How the prefix enters attention. "concat" is the paper's: its keys join the real keys in one softmax,
    # so even an untrained prefix takes attention from the real tokens and changes the model's answers. That
    # matters on instruction-tuned decoders, where some heads' real logits all lie far below zero and any
    # prefix column, a zero key included, takes over. "parallel" gives the prefix a softmax of its own over the
    # P positions and adds its gated output to the attention output (He et al. 2022's view of prefix-tuning as
    # a parallel module); its values start at zero, so the untrained prefix changes nothing. "auto" is
    # "parallel" for a gated prefix on decoders and "concat" elsewhere: encoders (vision ones too) keep the
    # paper's behaviour and results, and an ungated prefix stays in the form PEFT's prefix-tuning holds.
    prefix_form: str = "auto"

    adapter_size: int | None = None
    adapter_reduction: float = 16.0
    adapter_activation: str = "relu"
    # What the adapter's down projection reads: "raw" (the feed-forward output, the paper's adapter) or "rms"
    # (that output divided by its per-token RMS). "auto" is "rms" on pre-norm architectures, where the
    # feed-forward outputs of deep layers reach norms in the thousands: on the raw state one optimizer step on
    # the down projection moves a deep layer's output in proportion to that norm, and a few hundred steps make
    # an instruction-tuned model forget what it knew (benchmarks/RESULTS.md, "Instruction tuning a real LLM").
    adapter_input: str = "auto"

    # Task head (classifier, score, pooler, ...) stays trainable; list module names to override the table.
    train_head: bool = True
    head_modules: list[str] | None = None

    preset: str | None = None
    # Fields of modules registered outside this file (e.g. ia3_targets), by name.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("modules", "lora_targets", "head_modules"):
            value = getattr(self, name)
            if isinstance(value, str):  # from the command line: --set modules=lora,ia3
                setattr(self, name, [part.strip() for part in value.split(",") if part.strip()])
        self.validate()

    # The paper's three modules as booleans, as configs before ``modules`` spelt them.
    @property
    def lora(self) -> bool:
        return "lora" in self.modules

    @property
    def prefix(self) -> bool:
        return "prefix" in self.modules

    @property
    def adapter(self) -> bool:
        return "adapter" in self.modules

    def has(self, kind: str) -> bool:
        """Whether the config includes the module ``kind`` (``lora``, ``prefix``, ``adapter``, ...)."""
        return kind in self.modules

    def option(self, name: str) -> Any:
        """A field of a module registered in its own file: the config's value, else the module's default."""
        if name in self.options:
            return self.options[name]
        default = _module_options().get(name)
        if default is None:
            raise UniPELTError(f"no module declares the option {name!r}")
        return list(default) if isinstance(default, list) else default

    def resolved_pooling(self, arch: Any) -> str:
        """``auto`` pooling: one gate per token for decoders (causal, cache-exact), else per example."""
        if self.gate_pooling != "auto":
            return self.gate_pooling
        return "token" if arch.decoder else "mean"

    def resolved_gate_input(self, arch: Any) -> str:
        """``auto`` gate input: RMS-normalised on pre-norm architectures, raw on post-norm ones."""
        return _input_view(self.gate_input, arch)

    def resolved_adapter_input(self, arch: Any) -> str:
        """``auto`` adapter input: RMS-normalised on pre-norm architectures, raw on post-norm ones."""
        return _input_view(self.adapter_input, arch)

    def resolved_prefix_form(self, arch: Any) -> str:
        """``auto`` prefix form: parallel for a gated prefix on decoders, else concat."""
        if self.prefix_form != "auto":
            return self.prefix_form
        return "parallel" if arch.decoder and self.gate != "none" else "concat"

    def validate(self) -> None:
        """Reject values that would only fail later, deep inside a forward pass."""
        known_modules = _module_kinds()
        unknown = [m for m in self.modules if m not in known_modules]
        if unknown:
            raise UniPELTError(
                f"unknown module(s) {', '.join(map(repr, unknown))}; known: {', '.join(known_modules)}"
            )
        if len(set(self.modules)) != len(self.modules):
            raise UniPELTError(f"modules lists a module twice: {self.modules}")
        options = _module_options()
        stray = sorted(set(self.options) - set(options))
        if stray:
            raise UniPELTError(f"unknown option(s) {', '.join(stray)}; known: {', '.join(sorted(options))}")
        if self.gate not in GATES:
            raise UniPELTError(f"gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        if self.gate_pooling not in POOLINGS:
            raise UniPELTError(
                f"gate_pooling must be one of {', '.join(POOLINGS)}, got {self.gate_pooling!r}"
            )
        for name in ("gate_input", "adapter_input"):
            if getattr(self, name) not in INPUT_VIEWS:
                raise UniPELTError(
                    f"{name} must be one of {', '.join(INPUT_VIEWS)}, got {getattr(self, name)!r}"
                )
        if self.prefix_form not in PREFIX_FORMS:
            raise UniPELTError(
                f"prefix_form must be one of {', '.join(PREFIX_FORMS)}, got {self.prefix_form!r}"
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
    def ordered_modules(self) -> list[str]:
        """The enabled sub-modules in the registry's fixed order (the softmax router's site order)."""
        return [kind for kind in _module_kinds() if kind in self.modules]

    def adapter_bottleneck(self, hidden_size: int) -> int:
        """Adapter width: given directly, or hidden size / reduction factor (48 on BERT-base)."""
        if self.adapter_size is not None:
            return int(self.adapter_size)
        return max(1, int(hidden_size // self.adapter_reduction))

    def replace(self, **overrides: Any) -> UniPELTConfig:
        """A copy with some fields changed; unknown field names are an error, not silently dropped."""
        overrides = _normalise(overrides, self.modules, self.options)
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            names = sorted(known | set(_module_options()) | {"lora", "prefix", "adapter"})
            raise UniPELTError(f"unknown config field(s): {', '.join(unknown)}; known: {', '.join(names)}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def resolve(cls, method: str | UniPELTConfig, overrides: dict[str, Any]) -> UniPELTConfig:
        """A preset name or a config, with keyword overrides applied."""
        if isinstance(method, str):
            return cls.from_preset(method, **overrides)
        return method.replace(**overrides) if overrides else method

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> UniPELTConfig:
        """One of the paper's variants, with any field overridden."""
        if name not in PRESETS:
            raise UniPELTError(f"unknown method {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**copy.deepcopy(PRESETS[name]), "preset": name}).replace(**overrides)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON values, module options flattened beside the core fields."""
        data = asdict(self)
        data.update(data.pop("options"))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UniPELTConfig:
        if not isinstance(data, dict):
            raise UniPELTError(f"a UniPELT config must be a JSON object, not {type(data).__name__}")
        data = _normalise(dict(data), [], {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UniPELTError(
                f"config has unknown field(s) {', '.join(unknown)}; is it from a newer unipelt?"
            )
        try:
            return cls(**data)
        except TypeError as error:
            raise UniPELTError(f"config has a field of the wrong type: {error}") from error

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text, also written to ``path`` when given."""
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


# The module registry is imported when first needed, not at the top: it needs torch, and this file is read by
# the command line's start-up (`unipelt --help`) and by light tools that never build a model.


def _module_kinds() -> list[str]:
    from unipelt.modules import MODULES

    return list(MODULES)


def _module_options() -> dict[str, Any]:
    from unipelt.modules import MODULES  # late: see above

    return {name: default for cls in MODULES.values() for name, default in cls.options.items()}


def _normalise(data: dict[str, Any], modules: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """Fold old-style booleans (``lora=False``) into ``modules`` and module-file options into ``options``."""
    data = dict(data)
    legacy = {name: data.pop(name) for name in ("lora", "prefix", "adapter") if name in data}
    if legacy:
        chosen = list(data.get("modules", modules))
        for name, on in legacy.items():
            if on and name not in chosen:
                chosen.append(name)
            if not on and name in chosen:
                chosen.remove(name)
        data["modules"] = chosen
    extra = {name: data.pop(name) for name in list(data) if name in _module_options()}
    if extra or "options" in data:
        data["options"] = {**options, **data.get("options", {}), **extra}
    return data


# The paper's variants (Mao et al. 2022, Tables 1 and 3), plus IA3 and BitFit. Single methods are ungated,
# as in the paper. This is the one list of methods; ``ft`` (full fine-tuning) is added by training.
PRESETS: dict[str, dict[str, Any]] = {
    "adapter": {"modules": ["adapter"], "gate": "none"},
    "lora": {"modules": ["lora"], "gate": "none"},
    "prefix": {"modules": ["prefix"], "gate": "none"},
    "unipelt-ap": {"modules": ["prefix", "adapter"], "gate": "sigmoid"},
    "unipelt": {"modules": ["lora", "prefix", "adapter"], "gate": "sigmoid"},
    "unipelt-router": {"modules": ["lora", "prefix", "adapter"], "gate": "softmax"},
    "ap-nogate": {"modules": ["prefix", "adapter"], "gate": "none"},
    "ia3": {"modules": ["ia3"], "gate": "none"},
    "bitfit": {"modules": ["bitfit"], "gate": "none"},
    # AutoPELT: the paper's three modules, each switched on or off per layer by a learnt hard-concrete gate
    # under a latency and sparsity cost (unipelt.autopelt); closed ones are pruned after training.
    "autopelt": {"modules": ["lora", "prefix", "adapter"], "gate": "concrete"},
}


def _input_view(value: str, arch: Any) -> str:
    """What ``auto`` means for a gate's or an adapter's input: the RMS-normalised state on pre-norm
    architectures (their residual stream is never normalised), the raw one on post-norm encoders."""
    if value != "auto":
        return value
    return "rms" if arch.pre_norm else "raw"
