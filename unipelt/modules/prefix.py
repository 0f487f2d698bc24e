"""Prefix-tuning (Li & Liang 2021): P trainable key/value vectors per layer that every query attends to.

Training goes through the reparameterisation the paper uses, embedding (P, d) -> Linear(d, 512) -> tanh
-> Linear(512, 2 * layers * kv_dim), which is far more stable than learning the vectors directly. One MLP
serves all layers of a task; each layer computes only its own slice of the last Linear, inside its own
forward. That keeps everything a layer needs inside the layer, so gradient checkpointing (which re-runs a
layer during backward) recomputes exactly what the first pass computed. Without gradients the full prefix is
computed once and cached until a parameter changes. After training, :meth:`PrefixEncoder.eject` stores the
vectors and drops the MLP's ~10 M parameters; outputs stay bit-identical.

In the parallel form (``prefix_form="parallel"``, the default for a gated prefix on decoders) the prefix
has a softmax of its own and its values start at zero, so the untrained prefix changes nothing; its keys start
random, as in the paper, so that its positions differ once the values move.

Each layer's prefix has that layer's key width. In a staged model (Swin) widths differ per stage: the last
Linear then holds each layer's columns one after another, and the stored vectors are one tensor per layer
(a ``ParameterList``) instead of one (layers, 2, P, width) tensor.

How the vectors enter attention, without touching position ids or the KV cache, is in
:mod:`unipelt.inject.attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unipelt.errors import UniPELTError
from unipelt.modules.base import BuildSpec, PeftModule, register
from unipelt.modules.projections import key_width


@register
class PrefixEncoder(PeftModule):
    kind = "prefix"
    title = "prefix vectors"
    order = 20
    per_layer = False

    def __init__(
        self,
        num_layers: int,
        length: int,
        kv_dim: int | list[int],
        hidden_size: int,
        reparam: bool,
        mlp_hidden: int,
        parallel: bool = False,
    ):
        super().__init__()
        widths = [kv_dim] * num_layers if isinstance(kv_dim, int) else list(kv_dim)
        self.num_layers, self.length, self.kv_dims = num_layers, length, widths
        self.parallel = parallel  # its own softmax, added to the attention output (unipelt.inject.attention)
        # One width for every layer (None when they differ): the stacked (layers, 2, P, kv_dim) form exists.
        self.kv_dim = widths[0] if len(set(widths)) == 1 else None
        self.offsets = [2 * sum(widths[:i]) for i in range(num_layers)]  # each layer's first MLP column
        if reparam:
            self.embedding = nn.Embedding(length, hidden_size)
            self.mlp = nn.Sequential(
                nn.Linear(hidden_size, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, 2 * sum(widths))
            )
            if parallel:  # values start at zero: each layer's rows [offset + width, offset + 2 * width)
                with torch.no_grad():
                    for offset, width in zip(self.offsets, widths):
                        self.mlp[2].weight[offset + width : offset + 2 * width].zero_()
                        self.mlp[2].bias[offset + width : offset + 2 * width].zero_()
            self.prefix = None
        else:
            self.embedding = None
            self.mlp = None
            if self.kv_dim is not None:
                self.prefix = nn.Parameter(torch.randn(num_layers, 2, length, self.kv_dim) * 0.02)
            else:
                self.prefix = nn.ParameterList(torch.randn(2, length, width) * 0.02 for width in widths)
            if parallel:
                with torch.no_grad():
                    for layer in range(num_layers):
                        self.prefix[layer][1].zero_()
        self._cache: tuple[tuple[int, ...], torch.Tensor] | None = None
        # Each layer's stored prefix as attention's keys and values, by (layer, heads, head size, dtype):
        # (the stored tensor, its version, keys, values), valid while that tensor is unchanged.
        self._kv_cache: dict[tuple, tuple] = {}
        # Layers whose prefix an autopelt plan pruned: attention there runs without one (unipelt.plan).
        self.pruned_layers: set[int] = set()

    @classmethod
    def build(cls, spec: BuildSpec, index: int | None) -> PrefixEncoder:
        dims, config = spec.dims, spec.config
        return cls(
            len(spec.layers),
            config.prefix_length,
            [key_width(layer, spec.arch) for layer in spec.layers],
            dims["hidden_size"],
            config.prefix_reparam,
            config.prefix_hidden,
            parallel=config.resolved_prefix_form(spec.arch) == "parallel",
        )

    def gate_sites(self, gate: str) -> list[str]:
        return [] if gate == "none" else ["prefix"]

    @property
    def reparameterised(self) -> bool:
        return self.mlp is not None

    def _compute_layer(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s prefix from the MLP: only its columns of the last Linear, as (2, P, kv_dim)."""
        hidden = self.mlp[1](self.mlp[0](self.embedding.weight))  # (P, mlp_hidden)
        last = self.mlp[2]
        width = self.kv_dims[layer]
        rows = slice(self.offsets[layer], self.offsets[layer] + 2 * width)
        out = F.linear(hidden, last.weight[rows], last.bias[rows])  # (P, 2 * kv_dim)
        return out.view(self.length, 2, width).transpose(0, 1)

    def _compute(self) -> torch.Tensor | list[torch.Tensor]:
        """Every layer's prefix: stacked when the widths agree, else a list."""
        layers = [self._compute_layer(i) for i in range(self.num_layers)]
        return torch.stack(layers) if self.kv_dim is not None else layers

    def forward(self) -> torch.Tensor:
        """All prefixes as (layers, 2 [key, value], P, kv_dim); refused when the layers' widths differ."""
        if self.kv_dim is None:
            raise UniPELTError(
                "this model's layers differ in width (a staged model such as Swin), so its prefixes do not "
                "stack into one tensor; take each layer's with layer_prefix(index)"
            )
        if self.prefix is not None:
            return self.prefix
        if torch.is_grad_enabled():
            return self._compute()
        return self._cached()

    def _cached(self) -> torch.Tensor | list[torch.Tensor]:
        # Without gradients the MLP output only changes when a parameter does: reuse it until then.
        params = list(self.parameters())
        key = tuple(p._version for p in params) + tuple(p.data_ptr() for p in params)
        cache = self._cache
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, self._compute())
            self._cache = cache
        return cache[1]

    def layer_prefix(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s prefix as (2, P, kv_dim): computed here when gradients flow, else from the cache."""
        if self.prefix is not None:
            return self.prefix[layer]
        if torch.is_grad_enabled() or torch.compiler.is_compiling():  # a graph computes it in place
            return self._compute_layer(layer)
        return self._cached()[layer]

    def attention_kv(
        self, layer: int, kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s prefix as attention's keys and values, (1, kv_heads, P, head_dim) each.

        Inference from stored vectors keeps them until the stored tensor changes (in place, or replaced), so a
        cached decoding step does not reshape every layer's prefix again. With gradients on, while dynamo
        traces, or from the reparameterisation MLP, they are shaped afresh.
        """
        stored = self.prefix
        if not isinstance(stored, torch.Tensor) or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return _kv_layout(self.layer_prefix(layer), kv_heads, head_dim, dtype)
        key, state = (layer, kv_heads, head_dim, dtype), (stored.data_ptr(), stored._version)
        hit = self._kv_cache.get(key)
        if hit is None or hit[0] is not stored or hit[1] != state:
            hit = self._kv_cache[key] = (stored, state, *_kv_layout(stored[layer], kv_heads, head_dim, dtype))
        return hit[2], hit[3]

    @torch.no_grad()
    def fold_gate(self, layer: int, value: float) -> None:
        """Fold a constant gate ``value`` into layer ``layer``'s stored prefix (after :meth:`eject`): the
        paper's gate scales keys and values; the parallel form's gate scales the prefix's output, which is
        linear in the values alone."""
        if self.parallel:
            self.prefix[layer][1].mul_(value)
        else:
            self.prefix[layer].mul_(value)

    @torch.no_grad()
    def eject(self) -> None:
        """Replace the reparameterisation MLP by the prefix tensor it produces (identical outputs)."""
        if self.prefix is not None:
            return
        computed = self._compute()
        if self.kv_dim is not None:
            self.prefix = nn.Parameter(computed.detach().clone().contiguous())
        else:
            self.prefix = nn.ParameterList(layer.detach().clone().contiguous() for layer in computed)
        self.embedding = None
        self.mlp = None
        self._cache = None

    @torch.no_grad()
    def keep_positions(self, positions: list[list[int]] | list[tuple[int, ...]]) -> None:
        """Keep only ``positions[layer]`` of each layer's prefix (the same number per layer), as stored vectors.

        Prefix vectors carry no position, so attention over the kept ones equals attention over all of them
        when the dropped ones take no attention; a structure plan (:mod:`unipelt.plan`) shortens a prefix this
        way after measuring which positions do."""
        self.eject()
        if len(positions) != self.num_layers or len({len(p) for p in positions}) != 1:
            raise UniPELTError("keep_positions needs one list of positions per layer, all of one length")
        if self.kv_dim is not None:
            index = torch.tensor([list(p) for p in positions], device=self.prefix.device)
            kept = torch.stack([self.prefix[i][:, index[i]] for i in range(self.num_layers)])
            self.prefix = nn.Parameter(kept.contiguous(), requires_grad=self.prefix.requires_grad)
        else:
            self.prefix = nn.ParameterList(
                layer[:, list(p)].contiguous() for layer, p in zip(self.prefix, positions)
            )
        self.length = len(positions[0])

    def num_prefix_values(self) -> int:
        """Size of the prefix itself (what inference needs), whichever way it is stored."""
        return 2 * self.length * sum(self.kv_dims)

    def parameter_counts(self) -> dict[str, int]:
        mlp = 0
        if self.reparameterised:
            mlp = sum(p.numel() for p in self.embedding.parameters()) + sum(
                p.numel() for p in self.mlp.parameters()
            )
        return {"prefix": self.num_prefix_values(), "prefix_mlp": mlp}


def _kv_layout(
    prefix: torch.Tensor, kv_heads: int, head_dim: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's (2, P, kv_dim) prefix as keys and values shaped like attention's, (1, Hkv, P, D) each."""
    if prefix.dtype != dtype:
        prefix = prefix.to(dtype)
    keys, values = prefix.view(2, prefix.shape[1], kv_heads, head_dim).transpose(1, 2).unsqueeze(1).unbind(0)
    return keys, values
