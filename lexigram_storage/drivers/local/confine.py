"""The object tree under the root: every file and directory the driver opens by a key's path,
opened inside the root by the platform's confinement strategy (``platforms/``), and the
directories that writes create and deletes remove.

Concurrent deletes remove the directories they leave empty and concurrent writers turn objects
into directories (``a/b`` -> ``a/b\\x02``) while other calls work in them: the steps they undo
are retried, a bounded number of times (``RETRIES``)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from lexigram.contracts.infra.storage import StorageError

from lexigram_storage.drivers.local.files import OPEN_DIR, OPEN_READ, lstat_at, regular_file
from lexigram_storage.drivers.local.layout import INTERNAL_DIR, SELF, components
from lexigram_storage.drivers.local.platforms import Escape, Platform, portable
from lexigram_storage.errors import InvalidPathError

__all__ = ["RETRIES", "Tree"]

RETRIES = 100  # attempts of a step that concurrent deletes and writers can undo


class Tree:
    """The objects under *root*, confined by *platform*; errors name the backend *backend*."""

    def __init__(self, root: str, platform: Platform, backend: str) -> None:
        self.root = root
        self.platform = platform
        self.backend = backend
        self.locate()

    def locate(self) -> None:
        """Learn the root's real path (again at prepare: the root may be created then)."""
        self.real = self._root_real()
        self._internal_real = os.path.join(self.real, INTERNAL_DIR)

    def _root_real(self) -> str:
        """The root's real path, as the platform reports the paths of open files (on macOS
        ``F_GETPATH`` may spell it differently from ``realpath``: case, firmlinks)."""
        fd_path = self.platform.fd_path
        if fd_path is not None:
            with contextlib.suppress(OSError):
                fd = os.open(self.root, OPEN_DIR)
                try:
                    return fd_path(fd)
                finally:
                    os.close(fd)
        return os.path.realpath(self.root)

    def path(self, parts: list[str]) -> str:
        """The path of the stored names *parts* (not checked: opened, it must be)."""
        return self.root + "/" + "/".join(parts)

    # ------------------------------------------------------------------ checks

    def check_fd(self, fd: int, key: str | None) -> None:
        """Fail unless the opened file or directory lies inside the root, outside .lexigram.
        Where the platform cannot tell where an fd lies (the portable walk, whose fds need no
        check) or fails to, the fd is refused: there is no unchecked path."""
        fd_path = self.platform.fd_path
        if fd_path is None:
            raise Escape(f"fd {fd}: the {self.platform.name} strategy cannot tell where it lies")
        try:
            real = fd_path(fd)
        except OSError as exc:
            raise Escape(f"fd {fd}: {exc}") from None
        try:
            self._check_real(real)
        except Escape:
            if key is None or not self._is_key_file(fd, key):
                raise

    def _is_key_file(self, fd: int, key: str) -> bool:
        """Whether the open regular file *fd* has several names, one of them *key*'s, reached
        from the root without following any symlink. Such a file may be reported under another
        of its names: on macOS ``F_GETPATH`` gives the name last looked up, which for an object
        with a sidecar can be its anchor in ``.lexigram/meta``."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
            return False
        parts = components(key)
        try:
            dfd = portable.open_dir(self.root, parts[:-1])
        except (OSError, Escape):
            return False
        try:
            for name in (parts[-1], parts[-1] + SELF):
                try:
                    other = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    return True
            return False
        finally:
            os.close(dfd)

    def _check_real(self, real: str) -> None:
        root = self.real
        if real == root:
            return
        if not real.startswith(root) or real[len(root)] != "/" or (
                real.startswith(self._internal_real)
                and (len(real) == len(self._internal_real)
                     or real[len(self._internal_real)] == "/")):
            raise Escape(real)

    def follows(self, link: str) -> bool:
        """Whether a listing may follow the symlink *link*: never in the portable walk, else
        only if it leads inside the root."""
        if self.platform.fd_path is None:
            return False
        try:
            self._check_real(os.path.realpath(link))
        except Escape:
            return False
        return True

    def _checked(self, fd: int, key: str) -> int:
        """*fd*, once checked to lie inside the root; closed when the check fails."""
        try:
            self.check_fd(fd, key)
        except Escape:
            os.close(fd)
            raise self.escape_error(key) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def escape_error(self, key: str | None) -> InvalidPathError:
        if self.platform.fd_path is None:
            return InvalidPathError(
                "the key runs through a symlink: the portable confinement refuses every "
                "symlink below the storage root, as it cannot tell whether it leads outside",
                backend=self.backend, key=key)
        return InvalidPathError("the key resolves outside the storage root (symlink)",
                                backend=self.backend, key=key)

    # ------------------------------------------------------------------ opening

    def open_object(self, key: str) -> tuple[int, os.stat_result] | None:
        """Open the object's file for reading: (fd, stat), or None when there is none."""
        parts = components(key)
        if self.platform.fd_path is None:
            return self._walk_to_object(parts, key)
        path = self.path(parts)
        for candidate in (path, path + SELF):
            try:
                fd = os.open(candidate, OPEN_READ)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
                    continue
                raise
            st = regular_file(fd)
            if st is not None:
                return self._checked(fd, key), st
        return None

    def _walk_to_object(self, parts: list[str], key: str) -> tuple[int, os.stat_result] | None:
        """``open_object`` by the portable walk: no symlink is followed, on the way or at the
        end (one is refused), so the file is inside the root by construction."""
        try:
            dfd = portable.open_dir(self.root, parts[:-1])
        except Escape:
            raise self.escape_error(key) from None
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return None
            raise
        try:
            for name in (parts[-1], parts[-1] + SELF):
                try:
                    fd = portable.open_in(dfd, name, OPEN_READ)
                except Escape:
                    raise self.escape_error(key) from None
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENAMETOOLONG:
                        continue
                    raise
                st = regular_file(fd)
                if st is not None:
                    return fd, st
            return None
        finally:
            os.close(dfd)

    def open_parent(self, parts: list[str], key: str, create: bool) -> int | None:
        """An fd of the directory that holds the object's file (checked to be inside the root);
        creates the missing directories (never through a symlink leading outside) when asked."""
        if self.platform.fd_path is None:  # the portable walk: no symlink on the way
            try:
                return portable.open_dir(self.root, parts[:-1])
            except Escape:
                raise self.escape_error(key) from None
            except (FileNotFoundError, NotADirectoryError):
                if not create:
                    return None
                return self._make_parents(parts, key)
        parent = self.root if len(parts) == 1 else self.path(parts[:-1])
        try:
            fd = os.open(parent, OPEN_DIR)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                return None
            return self._make_parents(parts, key)
        return self._checked(fd, key)

    # ------------------------------------------------------------------ making and pruning

    def _make_parents(self, parts: list[str], key: str) -> int:
        """Open the directories of *parts* from the root, creating the missing ones.

        When a directory on the way was removed (see the module docstring), the walk starts
        again from the root (a bounded number of times)."""
        for _ in range(RETRIES):
            fd: int | None = os.open(self.root, OPEN_DIR)
            try:
                for name in parts[:-1]:
                    assert fd is not None
                    child = self._make_dir(fd, name, key)
                    os.close(fd)
                    fd = child
                    if fd is None:
                        break
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
            if fd is not None:
                return fd
        raise OSError(errno.EAGAIN, "the directories kept changing while being created", key)

    def _make_dir(self, fd: int, name: str, key: str) -> int | None:
        """Open the directory *name* in *fd*, creating it (an object of that name moves beside
        it, to ``name\\x02``); ``None`` when *fd* itself has been removed."""
        for _ in range(RETRIES):
            try:
                os.mkdir(name, dir_fd=fd)
            except FileExistsError:
                pass
            except FileNotFoundError:  # our directory was pruned by a concurrent delete
                return None
            try:
                return os.open(name, OPEN_DIR | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:  # pruned by a concurrent delete: make it again
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
            current = lstat_at(name, fd)
            if current is None or stat.S_ISDIR(current.st_mode):
                continue  # changed meanwhile: look again
            if stat.S_ISLNK(current.st_mode):
                return self._open_link_target(name, fd, key)
            self._move_beside(fd, name)
        raise OSError(errno.EAGAIN, "the directory kept changing while being created", name)

    def _open_link_target(self, name: str, dir_fd: int, key: str) -> int:
        """Open the directory a symlink *name* points to, refusing a target outside the root
        (the portable walk refuses every symlink)."""
        if self.platform.fd_path is None:
            raise self.escape_error(key)
        return self._checked(os.open(name, OPEN_DIR, dir_fd=dir_fd), key)

    def _move_beside(self, fd: int, name: str) -> None:
        """Move the object's file *name* to ``name\\x02``, making room for a directory.

        A concurrent writer may have done it first and made *name* a directory: the rename
        then fails (the directory cannot replace the object beside it), or, if that object
        has just been deleted too, moves the directory, which is put back."""
        try:
            os.rename(name, name + SELF, src_dir_fd=fd, dst_dir_fd=fd)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return  # changed meanwhile: the caller looks again
        moved = lstat_at(name + SELF, fd)
        if moved is not None and stat.S_ISDIR(moved.st_mode):
            with contextlib.suppress(OSError):
                os.rename(name + SELF, name, src_dir_fd=fd, dst_dir_fd=fd)

    def prune(self, parts: list[str]) -> None:
        """Remove the directories a delete left empty, up to (not including) the root. Each is
        removed relative to its parent opened and checked like any other path, so a directory
        swapped for a symlink meanwhile never leads the removal outside the root."""
        for depth in range(len(parts) - 1, 0, -1):
            try:
                dfd = self.open_parent(parts[:depth], "/".join(parts[:depth]), create=False)
            except (OSError, StorageError):
                return
            if dfd is None:
                return
            try:
                os.rmdir(parts[depth - 1], dir_fd=dfd)
            except OSError:
                return
            finally:
                os.close(dfd)
