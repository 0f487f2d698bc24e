"""Cost of AdapterHub ``adapters`` (1.3.0) methods next to the frozen base and full fine-tuning.

Runs inside ``benchmarks/.venv-adapters`` (see ``peer_env.sh``; adapters pins transformers 4.57.x)::

    benchmarks/.venv-adapters/bin/python -m benchmarks.peer_cost --out benchmarks/out/peer_cost_minilm.jsonl
    benchmarks/.venv-adapters/bin/python -m benchmarks.peer_cost --model mpnet --model-dir /path/to/mpnet \
        --out benchmarks/out/peer_cost_mpnet.jsonl

Methods (all on ``AutoModelForSequenceClassification`` with a 2-label head):

* ``base``: the plain transformers model, frozen (reference for inference ratios);
* ``base_adapters``: the same after ``adapters.init`` with no adapter (the library's own overhead);
* ``full_ft``: every parameter trained (reference for training ratios);
* ``unipelt``: ``UniPELTConfig()`` (prefix 10 + ``SeqBnConfig(reduction_factor=16)`` + LoRA r=8 on q,v,
  all gated); inference after ``eject_prefix_tuning`` (prefix MLP folded into flat prefixes);
* ``unipelt_mlp``: inference only, UniPELT with the prefix MLP still in place (what training runs);
* ``lora``: ``LoRAConfig(r=8)`` (q, v); ``seq_bn``: ``SeqBnConfig(reduction_factor=16)``;
* ``prefix``: ``PrefixTuningConfig(prefix_length=10)``, inference ejected.

MPNet is not among adapters' supported models: it is wrapped through ``adapters.AdapterModelInterface``, which
does not support prefix tuning, so ``unipelt``/``prefix`` are recorded as ``measure == "error"`` there.
Protocol and output format: ``cost_protocol.py``.  ``--random-init`` builds the model from its config with
random weights (costs do not depend on the weight values; for machines without the weight packages).
"""

from __future__ import annotations

import argparse

import adapters  # noqa: E402
import torch
from adapters import (  # noqa: E402
    AdapterModelInterface,
    LoRAConfig,
    PrefixTuningConfig,
    SeqBnConfig,
    UniPELTConfig,
)

from benchmarks import cost_protocol
from benchmarks.cost_protocol import Method

ADAPTER = "peer"

# adapters 1.3.0 has no MPNet support: map its module names for the plugin interface (no prefix tuning there).
MPNET_INTERFACE = AdapterModelInterface(
    adapter_methods=["bottleneck", "lora"],
    model_embeddings="embeddings",
    model_layers="encoder.layer",
    layer_self_attn="attention.attn",
    layer_cross_attn=None,
    attn_q_proj="q",
    attn_k_proj="k",
    attn_v_proj="v",
    attn_o_proj="o",
    layer_intermediate_proj="intermediate.dense",
    layer_output_proj="output.dense",
)


def adapter_configs() -> dict[str, object]:
    return {
        "unipelt": UniPELTConfig(),
        "lora": LoRAConfig(r=8, attn_matrices=["q", "v"]),
        "seq_bn": SeqBnConfig(reduction_factor=16),
        "prefix": PrefixTuningConfig(prefix_length=10),
    }


def make_builders(model_dir: str, random_init: bool, seed: int) -> list[Method]:
    config, load = cost_protocol.model_loader(model_dir, random_init, seed)
    interface = MPNET_INTERFACE if config.model_type == "mpnet" else None

    def with_init(mode: str) -> torch.nn.Module:
        m = load()
        adapters.init(m, interface=interface)
        for p in m.parameters():
            p.requires_grad = False
        return m.eval()

    def adapter(cfg, eject_at_inference: bool):
        def build(mode: str) -> torch.nn.Module:
            m = load()
            adapters.init(m, interface=interface)
            m.add_adapter(ADAPTER, config=cfg)
            m.train_adapter(ADAPTER)  # freezes the base model, activates the adapter, train mode
            if mode == "train":
                return m.train()
            if eject_at_inference:
                m.eject_prefix_tuning(ADAPTER)
            for p in m.parameters():
                p.requires_grad = False
            return m.eval()

        return build

    cfgs = adapter_configs()
    return cost_protocol.reference_methods(load) + [
        Method("base_adapters", with_init, train=False, note="adapters.init, no adapter added"),
        Method(
            "unipelt",
            adapter(cfgs["unipelt"], True),
            note="UniPELTConfig(); prefix MLP ejected for inference",
        ),
        Method(
            "unipelt_mlp",
            adapter(cfgs["unipelt"], False),
            train=False,
            note="UniPELTConfig(), inference with the prefix MLP kept",
        ),
        Method("lora", adapter(cfgs["lora"], False), note="LoRAConfig(r=8, q+v)"),
        Method("seq_bn", adapter(cfgs["seq_bn"], False), note="SeqBnConfig(reduction_factor=16)"),
        Method(
            "prefix",
            adapter(cfgs["prefix"], True),
            note="PrefixTuningConfig(prefix_length=10); MLP ejected for inference",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        epilog="Time: about 5 min; in benchmarks/.venv-adapters.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cost_protocol.add_cli_args(p)
    args = p.parse_args(argv)
    cost_protocol.run_for_model(
        lambda model_dir: make_builders(model_dir, args.random_init, args.seed),
        args,
        library="adapters",
        library_version=adapters.__version__,
        packages=("transformers", "adapters"),
    )


if __name__ == "__main__":
    main()
