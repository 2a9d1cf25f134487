"""Refuse to open a database on a network file system.

SQLite relies on POSIX advisory locks and, in WAL mode, on shared memory that every process
maps; over NFS, CIFS or SMB the locks are unreliable and the shared memory is not shared
between hosts, so two writers can silently corrupt the file. The mount table tells us which
file system holds a path: the longest mount point that contains it wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from db.errors import NetworkFileSystem

MOUNTS_PATH = "/proc/self/mounts"

# Types whose locking cannot be trusted by SQLite; "nfs" also matches "nfs4" by prefix below.
NETWORK_FS_TYPES = frozenset(
    {"nfs", "cifs", "smb", "smb2", "smb3", "smbfs", "afs", "ncpfs", "ceph", "glusterfs", "lustre", "9p"}
)
NETWORK_FUSE_TYPES = frozenset({"fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs", "fuse.rclone"})


@dataclass(frozen=True)
class Mount:
    device: str
    mount_point: str
    fs_type: str


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in mount points as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def read_mounts(mounts_path: str | None = None) -> list[Mount]:
    try:
        text = Path(mounts_path or MOUNTS_PATH).read_text()
    except OSError:
        return []  # no mount table (not Linux): nothing to check against
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts.append(Mount(_unescape(parts[0]), _unescape(parts[1]), parts[2]))
    return mounts


def mount_of(path: str | os.PathLike[str], mounts_path: str | None = None) -> Mount | None:
    """The mount holding `path` (which need not exist yet): the longest matching mount point."""
    target = os.path.realpath(path)
    best: Mount | None = None
    for mount in read_mounts(mounts_path):
        point = mount.mount_point.rstrip("/") or "/"
        inside = target == point or target.startswith(point if point == "/" else point + "/")
        # A later line with the same mount point is mounted over the earlier one.
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = mount
    return best


def is_network_fs(fs_type: str) -> bool:
    fs_type = fs_type.lower()
    return fs_type in NETWORK_FS_TYPES or fs_type in NETWORK_FUSE_TYPES or fs_type.startswith(("nfs", "smb"))


def check_local(path: str | os.PathLike[str], allow_network_fs: bool = False, mounts_path: str | None = None) -> None:
    """Raise NetworkFileSystem when `path` is on a network file system, unless allowed."""
    mount = mount_of(path, mounts_path)
    if mount is None or not is_network_fs(mount.fs_type):
        return
    if allow_network_fs:
        import logging

        logging.getLogger("tune_firehose.netfs").warning(
            "database %s is on %s (%s); continuing because --allow-network-fs was given",
            path,
            mount.fs_type,
            mount.mount_point,
        )
        return
    raise NetworkFileSystem(
        f"refusing to open the database {path}: it is on a {mount.fs_type} network file system "
        f"({mount.device} mounted at {mount.mount_point}). SQLite's locks and WAL shared memory do not "
        "work across hosts there, so concurrent writers can corrupt the file. Keep each host's database "
        "on a local disk and combine them with `read_queue.py merge`; pass --allow-network-fs only if "
        "this host is the only one that will ever open the file"
    )
