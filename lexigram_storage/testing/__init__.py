"""Test support for lexigram_storage users and driver authors.

``DriverConformance`` is the conformance suite every driver passes; import it in a pytest
module and subclass it with a ``store`` fixture.
"""

from lexigram_storage.testing.conformance import BAD_KEYS, DriverConformance

__all__ = ["BAD_KEYS", "DriverConformance"]
