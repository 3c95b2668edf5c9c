"""Add-ons that take their process down, hang, or interrupt the run: the runner must turn
each into a failed row for that case alone. Named in cases as `crashers:<Class>`."""

from __future__ import annotations

import os
import signal
import time

from harness.addons.gemma4 import AddOn


class AbortsInCapture(AddOn):
    def compute_embeddings(self, *args, **kwargs):
        os.abort()


class ExitsInCapture(AddOn):
    def compute_embeddings(self, *args, **kwargs):
        os._exit(7)


class ExitsWhileLoading(AddOn):
    def __init__(self, model_path):
        os._exit(3)


class Hangs(AddOn):
    def compute_embeddings(self, *args, **kwargs):
        time.sleep(3600)


class SendsSigterm(AddOn):
    """Stands in for a CI job being cancelled mid-run (in-process isolation)."""

    def compute_embeddings(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the run")
