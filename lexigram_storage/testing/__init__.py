"""Test support for lexigram_storage users and driver authors.

``DriverConformance`` is the conformance suite every driver passes; import it in a pytest
module and subclass it with a ``store`` fixture. ``StoreConformance`` is the part that needs
only the store API (any store, not only a ``BaseDriver``); the other classes are its areas.
"""

from lexigram_storage.testing.conformance import (
    BAD_KEYS,
    ConformanceStore,
    CopyMoveConformance,
    DeletingConformance,
    DriverConformance,
    EventsConformance,
    LargePayloadConformance,
    ListingConformance,
    PolicyConformance,
    ReadingConformance,
    StoreConformance,
    UrlConformance,
    WritingConformance,
)

__all__ = [
    "BAD_KEYS",
    "ConformanceStore",
    "CopyMoveConformance",
    "DeletingConformance",
    "DriverConformance",
    "EventsConformance",
    "LargePayloadConformance",
    "ListingConformance",
    "PolicyConformance",
    "ReadingConformance",
    "StoreConformance",
    "UrlConformance",
    "WritingConformance",
]
