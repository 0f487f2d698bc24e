"""Checkpoints in and out of the ecosystem: PEFT adapter folders and AdapterHub ``adapters`` folders.

Part of the core layer: it imports only the core (config, model building blocks, checkpoint), so
:meth:`UniPELTModel.load_task` can read foreign folders and :meth:`UniPELTModel.save_peft` write PEFT ones.
"""

from __future__ import annotations

from unipelt.interop.peft_export import save_peft

__all__ = ["save_peft"]
