"""Open a directory root writes keys into without trusting anything an
unprivileged user could have planted on the way.

The delivery directory may sit under a shared tmpfs (/dev/shm, /tmp): a path
check followed by chmod/chown/open by path lets a planted symlink redirect
root's writes. So the path is walked one component at a time with
O_NOFOLLOW|O_DIRECTORY relative to the previous directory's fd, and every
directory on the way must be owned by root and not writable by group or
others (a sticky root-owned directory such as /dev/shm is accepted above the
last component: nobody else can rename or remove what root created in it). A
symlink on the way is followed only if root owns it. The caller then works
through the returned fd (fchown, fchmod, openat), never through the path.
"""

from __future__ import annotations

import errno
import os
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LINKS = 32


class UnsafeDirectory(Exception):
    """The path cannot be trusted; str() is one line naming the culprit."""


def _check(st: os.stat_result, where: str, last: bool) -> None:
    if st.st_uid != 0:
        raise UnsafeDirectory(f"{where} is owned by uid {st.st_uid}, not root")
    if st.st_mode & 0o022 and (last or not st.st_mode & stat.S_ISVTX):
        raise UnsafeDirectory(f"{where} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")


def open_dir(path: str, create_mode: int | None = None) -> tuple[int, list[tuple[str, os.stat_result]]]:
    """fd of directory `path` (caller closes it) and the (path, stat) of every
    directory walked, `path` last. Missing components are created with
    `create_mode` (root-owned) when given; otherwise FileNotFoundError."""
    if not os.path.isabs(path):
        raise UnsafeDirectory(f"{path} is not an absolute path")
    todo = [p for p in path.split("/") if p]
    stack: list[tuple[int, str, os.stat_result]] = []
    links = 0

    def push(fd: int, where: str) -> None:
        # Checked before anything is looked up or created inside it.
        st = os.fstat(fd)
        stack.append((fd, where, st))
        _check(st, where, last=False)

    try:
        push(os.open("/", DIR_FLAGS), "/")
        while todo:
            comp = todo.pop(0)
            fd, where, _ = stack[-1]
            if comp == ".":
                continue
            if comp == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            child = os.path.join(where, comp)
            try:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create_mode is None:
                    raise
                try:
                    os.mkdir(comp, 0o700, dir_fd=fd)
                except FileExistsError:
                    todo.insert(0, comp)  # lost a race: open what is there, through the same checks
                    continue
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                os.fchmod(nfd, create_mode)  # not subject to the umask
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                lst = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(lst.st_mode):
                    raise UnsafeDirectory(f"{child} is not a directory") from None
                if lst.st_uid != 0:
                    raise UnsafeDirectory(f"{child} is a symlink owned by uid {lst.st_uid}, not root") from None
                links += 1
                if links > MAX_LINKS:
                    raise UnsafeDirectory(f"{path}: too many symlinks") from None
                target = os.readlink(comp, dir_fd=fd)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop()[0])
                todo[:0] = [p for p in target.split("/") if p]
                continue
            push(nfd, child)
        leaf, where, st = stack[-1]
        _check(st, where, last=True)
        walked = [(w, s) for _, w, s in stack]
        stack.pop()
        return leaf, walked
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def can_traverse(st: os.stat_result, uid: int, groups) -> bool:
    """Whether user `uid` (member of `groups`) may search directory `st`."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid in groups:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def fs_type_of(st: os.stat_result) -> str:
    """Filesystem type of the mount a stat result belongs to (by device number,
    so it describes the object actually opened, not a path that may change)."""
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            if left.split()[2] == dev:
                return right.split()[0]
    return "unknown"
