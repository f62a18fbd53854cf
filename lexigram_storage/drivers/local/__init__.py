"""The local filesystem driver (``driver.py``; its module docstring gives the guarantees)."""

from lexigram_storage.drivers.local.driver import INTERNAL_DIR, LocalDriver

__all__ = ["INTERNAL_DIR", "LocalDriver"]
