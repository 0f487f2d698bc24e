"""A test hook that kills this process at a named point, so tests can prove that a kill at any moment is survivable.

Set ``UNIPELT_TEST_KILL_AT=<label>`` and the process sends itself SIGKILL when it reaches :func:`kill_point`
with that label: no cleanup handler, ``finally`` block or atexit hook runs, exactly as with ``kill -9`` or the
out-of-memory killer. The labels, in the order a run passes them:

    checkpoint-save:STEP       the added weights of Trainer checkpoint STEP are written, nothing else of it yet
    checkpoint-complete:STEP   checkpoint STEP is written, its completion mark is not
    final-checkpoint           RUN/checkpoint/ is written, RUN/tokenizer/ and the reports are not
    final-metrics              RUN/metrics.json is written, RUN/trainer/ is not removed yet

Unset (always, outside tests) this is one dictionary look-up.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "UNIPELT_TEST_KILL_AT"


def kill_point(label: str) -> None:
    """SIGKILL this process when ``UNIPELT_TEST_KILL_AT`` equals ``label``."""
    if os.environ.get(KILL_ENV) == label:
        os.kill(os.getpid(), signal.SIGKILL)
