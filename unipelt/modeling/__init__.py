"""The parts of :class:`unipelt.model.UniPELTModel`, as mixins of its class: compiled calls, switches and gates,
merging and checkpoints. They reach the model's state (``base_model``, ``tasks``, ``injector``) through it."""
