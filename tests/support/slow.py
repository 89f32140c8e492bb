"""A host-side transform that slows each batch down, so a test can kill a run part-way through."""

import time


def slow_down(batch, seconds: float = 0.05):
    time.sleep(seconds)
    return batch
