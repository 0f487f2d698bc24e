"""Running a model over inputs: the one batch loop, decoding, tagging words, scoring chats and measuring
retention.

These sit below the task kinds and the verbs: a kind scores its outputs with them during training, and
``eval``, ``predict``, ``export``, ``serve`` and AutoPELT use them on finished runs.
"""
