"""UniPELTModel: a frozen Transformers model with gated LoRA, prefix-tuning and adapters added by hooks.

Nothing in the base model is replaced or renamed. Every added parameter lives in ``UniPELTModel.layers``
(one :class:`LayerModules` per transformer layer) or ``UniPELTModel.prefix``; forward hooks are the
plumbing that lets the frozen model's own code call them:

- a pre-hook on the backbone records the padding mask and computes all prefixes once per forward;
- a pre-hook on each self-attention module computes that layer's LoRA/prefix gates from its input;
- a hook on each LoRA target projection adds ``gate * B(A(x))``;
- a hook on the feed-forward output projection applies the adapter;
- the prefix enters through our attention function or seam (:mod:`unipelt.attention`).

So the base model's state dict, position handling and KV cache are exactly as transformers wrote them,
and ``with model.disabled():`` gives the base model bit for bit.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from unipelt.adapter import BottleneckAdapter
from unipelt.architectures import architecture_for, layer_list, parse_projection
from unipelt.attention import PrefixSite, install_seam, interface_name, remove_seam
from unipelt.checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_directory, write_json
from unipelt.config import UniPELTConfig
from unipelt.errors import CheckpointMismatchError, UniPELTError
from unipelt.gates import SigmoidGate, SoftmaxRouter, broadcastable
from unipelt.lora import LoRA, merge_into, projection_features
from unipelt.prefix import PrefixEncoder
from unipelt.runtime import Runtime

CHECKPOINT_FORMAT = 1
COUNT_KEYS = ("lora", "prefix", "prefix_mlp", "adapter", "gates", "head")


class LayerModules(nn.Module):
    """What UniPELT adds to one transformer layer: LoRA pairs by target, the layer gate, the adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.lora = nn.ModuleDict()
        self.gate: SigmoidGate | SoftmaxRouter | None = None
        self.adapter: BottleneckAdapter | None = None
        self.live: dict[str, torch.Tensor] = {}  # this forward's gate values (not parameters, not saved)


def model_dims(config: Any) -> dict[str, int]:
    """The shape facts of a Transformers config that UniPELT and its checkpoints depend on."""
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    return {
        "hidden_size": hidden,
        "num_hidden_layers": int(config.num_hidden_layers),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
    }


class UniPELTModel(nn.Module):
    """A frozen Transformers model plus UniPELT's gated sub-modules. Call it like the base model."""

    def __init__(self, model: nn.Module, config: UniPELTConfig | None = None) -> None:
        super().__init__()
        if isinstance(model, UniPELTModel):
            raise UniPELTError("this model already has UniPELT modules; call unload() first")
        config = config or UniPELTConfig()
        arch = architecture_for(model)
        self.base_model = model
        self.unipelt_config = config
        self.arch = arch
        self.dims = model_dims(model.config)
        pooling = config.gate_pooling
        if pooling == "auto":
            pooling = "token" if arch.decoder else "mean"
        self.runtime = Runtime(pooling=pooling)
        self.lora_merged = False
        self._handles: list[Any] = []
        self._lora_handles: list[Any] = []
        self._seamed: list[nn.Module] = []
        self._original_attn: str | None = None

        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.head_names = self._find_head() if config.train_head else []
        for name in self.head_names:
            model.get_submodule(name).requires_grad_(True)

        backbone = model.base_model
        layers = layer_list(backbone, arch)
        kv_dim = self.dims["num_key_value_heads"] * self.dims["head_dim"]
        self.prefix = (
            PrefixEncoder(
                len(layers),
                config.prefix_length,
                kv_dim,
                self.dims["hidden_size"],
                config.prefix_reparam,
                config.prefix_hidden,
            )
            if config.prefix
            else None
        )
        self.layers = nn.ModuleList(self._build_layer(i, layer) for i, layer in enumerate(layers))
        self._backbone_signature = inspect.signature(backbone.forward)
        self._handles.append(backbone.register_forward_pre_hook(self._begin_forward, with_kwargs=True))
        self._handles.append(backbone.register_forward_hook(self._end_forward))
        if config.prefix and arch.seam == "interface":
            self._original_attn = model.config._attn_implementation
            model.set_attn_implementation(interface_name(self._original_attn))

    # ----------------------------------------------------------------------------------------- building

    def _find_head(self) -> list[str]:
        """Task-head modules by name (classifier, score, pooler...), searched at the top and in the backbone."""
        wanted = self.unipelt_config.head_modules or list(self.arch.head)
        backbone_prefix = getattr(self.base_model, "base_model_prefix", "")
        names = []
        for name, _ in self.base_model.named_modules():
            short = name.removeprefix(backbone_prefix + ".") if backbone_prefix else name
            if short in wanted or name in wanted:
                names.append(name)
        if self.unipelt_config.head_modules and not names:
            raise UniPELTError(f"none of head_modules {self.unipelt_config.head_modules} exists in the model")
        return names

    def _gate_sites(self) -> list[str]:
        config = self.unipelt_config
        if config.gate == "softmax":
            return config.modules
        if config.gate == "sigmoid":
            sites = [f"lora_{t}" for t in config.lora_targets] if config.lora else []
            return sites + (["prefix"] if config.prefix else [])
        return []

    def _build_layer(self, index: int, layer: nn.Module) -> LayerModules:
        config, arch, hidden = self.unipelt_config, self.arch, self.dims["hidden_size"]
        modules = LayerModules()
        sites = self._gate_sites()
        if config.gate == "softmax":
            modules.gate = SoftmaxRouter(hidden, sites, config.router_hidden, config.router_temperature)
        elif sites:
            modules.gate = SigmoidGate(hidden, sites)
        attention = layer.get_submodule(arch.attention)
        if modules.gate is not None:
            self._handles.append(
                attention.register_forward_pre_hook(self._gate_hook(index, modules), with_kwargs=True)
            )
        if config.prefix:
            site = PrefixSite(self.runtime, index, self.dims["num_key_value_heads"], self.dims["head_dim"])
            install_seam(attention, arch.seam, site)
            self._seamed.append(attention)
        if config.lora:
            self._add_lora(index, layer, modules)
        if config.adapter:
            site_module = layer.get_submodule(arch.ffn_output)
            _, out_features = projection_features(site_module)
            modules.adapter = BottleneckAdapter(
                out_features,
                config.adapter_bottleneck(hidden),
                config.adapter_activation,
                gated=config.gate == "sigmoid",
            )
            self._handles.append(site_module.register_forward_hook(self._adapter_hook(index, modules)))
        return modules

    def _add_lora(self, index: int, layer: nn.Module, modules: LayerModules) -> None:
        config = self.unipelt_config
        by_module: dict[str, list[tuple[str, int, int]]] = {}
        for target in config.lora_targets:
            if target not in self.arch.projections:
                known = ", ".join(self.arch.projections)
                raise UniPELTError(
                    f"unknown LoRA target {target!r} for {self.base_model.config.model_type}; use: {known}"
                )
            path, part, parts = parse_projection(self.arch.projections[target])
            by_module.setdefault(path, []).append((target, part, parts))
        for path, targets in by_module.items():
            projection = layer.get_submodule(path)
            in_features, out_features = projection_features(projection)
            for target, _, parts in targets:
                modules.lora[target] = LoRA(
                    in_features,
                    out_features // parts,
                    config.lora_rank,
                    config.lora_alpha,
                    config.lora_dropout,
                )
            self._lora_handles.append(projection.register_forward_hook(self._lora_hook(modules, targets)))

    # ------------------------------------------------------------------------------------------- hooks

    def _begin_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        runtime = self.runtime
        mask = kwargs.get("attention_mask")
        if mask is None and args:
            mask = self._backbone_signature.bind_partial(*args, **kwargs).arguments.get("attention_mask")
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or bool(mask.all()):
            mask = None  # no padding: plain means, fewer small ops in every layer
        runtime.token_mask = mask
        if runtime.enabled:
            runtime.latest_gates = {}
        runtime.prefix = self.prefix() if (runtime.enabled and self.prefix is not None) else None

    def _end_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.runtime.end_forward()
        for modules in self.layers:
            modules.live = {}

    def _gate_hook(self, index: int, modules: LayerModules):
        runtime = self.runtime
        site_of = self._site_of

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if not runtime.enabled:
                return
            x = args[0] if args else kwargs["hidden_states"]
            values = modules.gate(x, runtime.mask_for(x), runtime.pooling)
            modules.live = values
            site = site_of(module)
            if site is not None:
                site.gate = values.get("prefix")
            for name, value in values.items():
                runtime.record(index, name, value)

        return hook

    @staticmethod
    def _site_of(module: nn.Module) -> PrefixSite | None:
        return module.__dict__.get("_unipelt_site")

    def _lora_hook(self, modules: LayerModules, targets: list[tuple[str, int, int]]):
        runtime, gate_kind = self.runtime, self.unipelt_config.gate

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if not runtime.enabled:
                return output
            x = args[0]
            for target, part, parts in targets:
                lora = modules.lora[target]
                # Scale in the rank-r bottleneck, then one addmm adds B(.) into the output: no full-width
                # temporaries for the product or the sum.
                mid = lora.down(x)
                if gate_kind == "none":
                    mid = mid * lora.scaling
                else:
                    mid = mid * broadcastable(
                        modules.live.get("lora" if gate_kind == "softmax" else f"lora_{target}"), mid
                    )
                mid = mid.reshape(-1, mid.shape[-1])
                if parts == 1:
                    flat = output.view(-1, output.shape[-1])
                    if torch.is_grad_enabled():
                        output = torch.addmm(flat, mid, lora.lora_B.weight.t()).view(output.shape)
                    else:  # inference: accumulate into the fresh projection output, no tokens x width copy
                        flat.addmm_(mid, lora.lora_B.weight.t())
                else:
                    width = output.shape[-1] // parts
                    delta = (mid @ lora.lora_B.weight.t()).view(*output.shape[:-1], width)
                    output = torch.cat(
                        [
                            output[..., : part * width],
                            output[..., part * width : (part + 1) * width] + delta,
                            output[..., (part + 1) * width :],
                        ],
                        dim=-1,
                    )
            return output

        return hook

    def _adapter_hook(self, index: int, modules: LayerModules):
        runtime, gate_kind = self.runtime, self.unipelt_config.gate

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if not runtime.enabled:
                return output
            adapter = modules.adapter
            if gate_kind == "sigmoid":
                gate = adapter.own_gate(output, runtime.mask_for(output), runtime.pooling)
                runtime.record(index, "adapter", gate)
            else:
                gate = modules.live.get("adapter")
            return adapter(output, gate)

        return hook

    # -------------------------------------------------------------------------------------- public API

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the plain base model: no LoRA, prefix, adapter or gate is applied inside this block."""
        previous = self.runtime.enabled
        self.runtime.enabled = False
        try:
            yield
        finally:
            self.runtime.enabled = previous

    def gate_values(self) -> dict[int, dict[str, torch.Tensor]]:
        """Gate values of the latest forward, per layer and site: (B,) per example or (B, T) per token."""
        return {layer: dict(sites) for layer, sites in sorted(self.runtime.latest_gates.items())}

    def gate_parameters(self) -> list[nn.Parameter]:
        params = [p for m in self.layers if m.gate is not None for p in m.gate.parameters()]
        params += [
            p
            for m in self.layers
            if m.adapter is not None and m.adapter.gate is not None
            for p in m.adapter.gate.parameters()
        ]
        return params

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by kind: added modules, gates, head (for separate learning rates)."""
        gate_ids = {id(p) for p in self.gate_parameters()}
        added = [p for p in self.layers.parameters() if id(p) not in gate_ids]
        if self.prefix is not None:
            added += list(self.prefix.parameters())
        head = [p for name in self.head_names for p in self.base_model.get_submodule(name).parameters()]
        return {"added": added, "gates": self.gate_parameters(), "head": head}

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per sub-module, and totals with and without the prefix MLP.

        ``prefix`` is the size of the prefix vectors (what inference keeps); ``prefix_mlp`` the
        reparameterisation MLP that exists only while training (0 once ejected or when stored flat).
        """

        def size(params) -> int:
            return sum(p.numel() for p in params)

        counts = dict.fromkeys(COUNT_KEYS, 0)
        gate_ids = {id(p) for p in self.gate_parameters()}
        counts["gates"] = size(self.gate_parameters())
        counts["lora"] = size(p for m in self.layers for p in m.lora.parameters())
        counts["adapter"] = size(
            p
            for m in self.layers
            if m.adapter is not None
            for p in m.adapter.parameters()
            if id(p) not in gate_ids
        )
        if self.prefix is not None:
            counts["prefix"] = self.prefix.num_prefix_values()
            if self.prefix.reparameterised:
                counts["prefix_mlp"] = size(self.prefix.embedding.parameters()) + size(
                    self.prefix.mlp.parameters()
                )
        counts["head"] = size(self.parameter_groups()["head"])
        without_mlp = sum(counts[k] for k in ("lora", "prefix", "adapter", "gates", "head"))
        counts["total_with_prefix_mlp"] = (
            without_mlp - counts["prefix"] * bool(counts["prefix_mlp"]) + counts["prefix_mlp"]
        )
        counts["total_without_prefix_mlp"] = without_mlp
        counts["base_model"] = size(self.base_model.parameters()) - counts["head"]
        return counts

    def freeze_gates(self, frozen: bool = True) -> None:
        """Hold gates at their current values (gate warm-up) or release them."""
        for parameter in self.gate_parameters():
            parameter.requires_grad_(not frozen)

    def eject_prefix_mlp(self) -> None:
        """Drop the prefix reparameterisation MLP, keeping the prefix it produces (outputs unchanged)."""
        if self.prefix is not None:
            self.prefix.eject()
            self.unipelt_config = self.unipelt_config.replace(prefix_reparam=False)

    def merge_lora(self) -> None:
        """Fold an ungated LoRA into the base weights and remove it; a gated one cannot be merged."""
        config = self.unipelt_config
        if not config.lora or self.lora_merged:
            raise UniPELTError("there is no unmerged LoRA in this model")
        if config.gate != "none":
            raise UniPELTError(
                f"cannot merge a gated LoRA (gate={config.gate!r}): its scale depends on each input, so no "
                "single weight matrix reproduces it. Only an ungated LoRA (gate='none', e.g. the 'lora' "
                "preset) can be merged; keep this model unmerged for inference."
            )
        layers = layer_list(self.base_model.base_model, self.arch)
        for modules, layer in zip(self.layers, layers):
            for target, lora in modules.lora.items():
                path, part, parts = parse_projection(self.arch.projections[target])
                merge_into(layer.get_submodule(path), lora.delta_weight(), part, parts)
            modules.lora = nn.ModuleDict()
        for handle in self._lora_handles:
            handle.remove()
        self._lora_handles = []
        self.lora_merged = True

    def unload(self) -> nn.Module:
        """Remove every hook and added module and return the base model (still frozen)."""
        for handle in self._handles + self._lora_handles:
            handle.remove()
        self._handles, self._lora_handles = [], []
        for module in self._seamed:
            remove_seam(module)
        self._seamed = []
        if self._original_attn is not None:
            self.base_model.set_attn_implementation(self._original_attn)
        return self.base_model

    # --------------------------------------------------------------------------------- checkpointing

    def added_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what UniPELT added plus the task head: the whole content of a checkpoint."""
        state = {f"layers.{k}": v for k, v in self.layers.state_dict().items()}
        if self.prefix is not None:
            state.update({f"prefix.{k}": v for k, v in self.prefix.state_dict().items()})
        for name in self.head_names:
            for key, value in self.base_model.get_submodule(name).state_dict().items():
                state[f"head.{name}.{key}"] = value
        return {k: v.detach().contiguous() for k, v in state.items()}

    def fingerprint(self) -> dict[str, Any]:
        config = self.base_model.config
        return {
            "model_type": config.model_type,
            "architecture": type(self.base_model).__name__,
            **self.dims,
            "num_labels": int(getattr(config, "num_labels", 0) or 0),
        }

    def save_pretrained(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write unipelt_config.json and unipelt_weights.safetensors to ``path`` atomically."""
        if self.lora_merged:
            raise UniPELTError(
                "LoRA was merged into the base weights; an added-weights checkpoint cannot hold that. "
                "Save the merged model with model.base_model.save_pretrained(...) instead."
            )
        state = self.added_state_dict()
        meta = {
            "format": CHECKPOINT_FORMAT,
            "unipelt": self.unipelt_config.to_dict(),
            "base": self.fingerprint(),
            "head_modules": self.head_names,
            **(extra or {}),
        }

        def write(folder: Path) -> None:
            save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
            write_json(folder / CONFIG_NAME, meta)

        return atomic_directory(path, write)

    @staticmethod
    def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
        path = Path(path)
        config_file = path / CONFIG_NAME
        if not path.exists():
            raise UniPELTError(f"checkpoint not found: {path}")
        if not config_file.is_file() or not (path / WEIGHTS_NAME).is_file():
            raise UniPELTError(
                f"{path} is not a unipelt checkpoint: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                "(written by save_pretrained or `unipelt train`)"
            )
        import json

        try:
            return json.loads(config_file.read_text())
        except json.JSONDecodeError as error:
            raise UniPELTError(
                f"{config_file} is not valid JSON ({error}); the checkpoint is damaged"
            ) from error

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | Path) -> UniPELTModel:
        """Rebuild the UniPELT modules on a fresh base model and load a checkpoint into them."""
        meta = cls.read_checkpoint_config(path)
        config = UniPELTConfig.from_dict(meta["unipelt"])
        expected = meta.get("base", {})
        architecture_for(model)
        actual = {"model_type": model.config.model_type, **model_dims(model.config)}
        diffs = [
            f"{k}: checkpoint {expected[k]!r}, model {v!r}"
            for k, v in actual.items()
            if k in expected and expected[k] != v
        ]
        if diffs:
            raise CheckpointMismatchError(
                f"checkpoint {path} was made for a different base model ({'; '.join(diffs)}). "
                "Load it onto the model it was trained from."
            )
        unipelt = cls(model, config)
        state = load_file(str(Path(path) / WEIGHTS_NAME))
        unipelt.load_added_state_dict(state, source=str(path))
        return unipelt

    def load_added_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        own = self.added_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointMismatchError(
                f"{source} does not match this model's UniPELT modules: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        shapes = [
            f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in own.items()
            if state[k].shape != v.shape
        ]
        if shapes:
            raise CheckpointMismatchError(
                f"{source} has tensors of other shapes than this model (checkpoint vs model): {'; '.join(shapes[:5])}. "
                "Was it trained with another number of labels or another base model?"
            )
        targets = dict(self.layers.named_parameters(prefix="layers"))
        targets.update(dict(self.layers.named_buffers(prefix="layers")))
        if self.prefix is not None:
            targets.update(dict(self.prefix.named_parameters(prefix="prefix")))
        for name in self.head_names:
            head = self.base_model.get_submodule(name)
            targets.update(dict(head.named_parameters(prefix=f"head.{name}")))
            targets.update(dict(head.named_buffers(prefix=f"head.{name}")))
        with torch.no_grad():
            for key, value in state.items():
                targets[key].copy_(value)


def add_unipelt(model: nn.Module, method: str | UniPELTConfig = "unipelt", **overrides: Any) -> UniPELTModel:
    """Turn a (frozen) Transformers model into a trainable UniPELT model.

    ``method`` is a preset name (adapter, lora, prefix, unipelt-ap, unipelt, unipelt-router, ap-nogate) or a
    config; keyword overrides change single fields, e.g. ``add_unipelt(model, "unipelt", lora_rank=4)``.
    """
    config = (
        UniPELTConfig.from_preset(method, **overrides)
        if isinstance(method, str)
        else method.replace(**overrides)
    )
    return UniPELTModel(model, config)


def load_unipelt(model: nn.Module, path: str | Path) -> UniPELTModel:
    """Load a UniPELT checkpoint (added weights + config) onto a fresh base model."""
    return UniPELTModel.from_pretrained(model, path)
