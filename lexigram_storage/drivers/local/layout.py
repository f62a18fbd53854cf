"""Where each key's object lives under the root, and back (listings): the stored names.

``<root>/<key>`` holds the object ``key``; ``<root>/.lexigram/`` is the driver's own area
(``staging/`` for temp files, ``meta/`` for metadata sidecars when the filesystem has no user
extended attributes), which listings skip.

Every valid key can be stored (the key rule is the same on every driver), including what a
filesystem does not allow:

* a key that is also a "directory" of other keys (``a/b`` and ``a/b/c``): the object ``a/b``
  then lives in the file ``a/b\\x02`` beside the directory ``a/b``;
* a segment longer than 200 UTF-8 bytes (a file name may have 255): it is split into pieces of
  at most 200 bytes (never inside a character), each but the last stored as a directory whose
  name ends in ``\\x01``. Every stored name, with its suffix, is at most 201 bytes, whatever
  the key: the names are decided before anything is written;
* a key whose first segment is ``.lexigram``: that segment is stored as ``.lexigram\\x03``, so
  such keys never reach the driver's own area.

No control character can appear in a key, so the mapping is reversible; plain keys are plain
paths. ``keys`` reads it back in key order, lazily."""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Iterator

__all__ = ["INTERNAL_DIR", "META", "SELF", "STAGING", "components", "keys"]

INTERNAL_DIR = ".lexigram"
STAGING = "staging"  # INTERNAL_DIR/STAGING: temp files
META = "meta"  # INTERNAL_DIR/META: metadata sidecars
_CONT = "\x01"  # suffix of a directory holding the rest of an over-long segment
SELF = "\x02"  # suffix of the file of an object whose key is also a directory
_OWN = INTERNAL_DIR + "\x03"  # the stored name of a key's first segment ".lexigram"
_PIECE = 200  # bytes per stored name piece (NAME_MAX is 255)


def components(key: str) -> list[str]:
    """The stored names for *key*: one per segment, a segment over ``_PIECE`` UTF-8 bytes
    split into pieces, a first segment ``.lexigram`` escaped."""
    if len(key) <= _PIECE and (key.isascii() or len(key.encode("utf-8", "surrogatepass"))
                               <= _PIECE):
        parts = key.split("/")
    else:
        parts = []
        for segment in key.split("/"):
            raw = segment.encode("utf-8", "surrogatepass")
            while len(raw) > _PIECE:
                cut = _PIECE
                while (raw[cut] & 0xC0) == 0x80:  # keep UTF-8 sequences whole
                    cut -= 1
                parts.append(raw[:cut].decode("utf-8", "surrogatepass") + _CONT)
                raw = raw[cut:]
            parts.append(raw.decode("utf-8", "surrogatepass"))
    if parts[0] == INTERNAL_DIR:
        parts[0] = _OWN
    return parts


def keys(root: str, prefix: str, after: str | None) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(key, DirEntry) of every file under *root* whose key starts with *prefix* and comes
    after *after*, in key order: a lazy k-way merge of directory reads (a directory is read
    only when its keys are next)."""
    return _dir_keys(root, "", prefix, after, top=True)


def _dir_keys(path: str, base: str, prefix: str, after: str | None, top: bool = False
              ) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """``keys`` below the directory *path*, whose key prefix is *base*.

    Entries are sorted by the smallest key they can hold; a subdirectory is read only when
    that bound is reached, and overlapping ranges (continuation pieces) are merged."""
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return
    items: list[tuple[str, int, os.DirEntry[str]]] = []  # (lower bound, kind, entry)
    for entry in entries:
        name = entry.name
        if top and name.startswith(INTERNAL_DIR):
            if name == INTERNAL_DIR:
                continue  # the driver's own area
            if name.startswith(_OWN):
                name = INTERNAL_DIR + name[len(_OWN):]  # a key's escaped ".lexigram"
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if is_dir:
            if name.endswith(_CONT):
                kp, kind = base + name[:-1], 2
            else:
                kp, kind = base + name + "/", 1
            # prune subtrees outside the prefix or wholly before start_after
            if not (kp.startswith(prefix) or prefix.startswith(kp)):
                continue
            if after is not None and kp < after and not after.startswith(kp):
                continue
        else:
            kp = base + (name[:-1] if name.endswith(SELF) else name)
            kind = 0
            if not kp.startswith(prefix) or (after is not None and kp <= after):
                continue
        items.append((kp, kind, entry))
    items.sort(key=lambda item: item[0])
    heap: list[tuple[str, int, os.DirEntry[str],
                     Iterator[tuple[str, os.DirEntry[str]]] | None]] = []
    seq = itertools.count()
    i = 0
    while i < len(items) or heap:
        while i < len(items) and (not heap or items[i][0] <= heap[0][0]):
            kp, kind, entry = items[i]
            i += 1
            if kind == 0:
                heapq.heappush(heap, (kp, next(seq), entry, None))
            else:
                sub = _dir_keys(entry.path, kp, prefix, after)
                for key, sub_entry in sub:
                    heapq.heappush(heap, (key, next(seq), sub_entry, sub))
                    break
        if not heap:
            continue
        key, _, entry_, sub_it = heapq.heappop(heap)
        yield key, entry_
        if sub_it is not None:
            for nkey, nentry in sub_it:
                heapq.heappush(heap, (nkey, next(seq), nentry, sub_it))
                break
