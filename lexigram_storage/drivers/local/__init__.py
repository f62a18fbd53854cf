"""The local filesystem driver: objects are files under one root directory.

``driver.py``     ``LocalDriver``: the primitives, atomic commits, the guarantees
``layout.py``     key <-> stored names (both ways: listings), the driver's own area
``confine.py``    opening a key's file and directories inside the root; making and pruning them
``platforms/``    the confinement strategy of each platform (linux, darwin, portable) and its pick
``meta.py``       the metadata record, kept in an xattr or a sidecar
``sidecar.py``    sidecar records for filesystems without user xattrs
``fastpath.py``   the Linux fast paths (O_TMPFILE, openat2/preadv2, copy_file_range) and their
                  portable paths
``staging.py``    the staging area of temp files
``threads.py``    the one thread pool of every blocking call; commits under cancellation
``files.py``      small fd helpers

Presigned URLs are ``drivers/_signing.py``, which any driver may use."""

from lexigram_storage.drivers.local.driver import LocalDriver
from lexigram_storage.drivers.local.layout import INTERNAL_DIR

__all__ = ["INTERNAL_DIR", "LocalDriver"]
