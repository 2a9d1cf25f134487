"""The worker refuses a database on a network file system (faked mount table), unless told."""

from __future__ import annotations

from pathlib import Path

import pytest

import db.netfs as netfs
from chalicelib.queues.local import LocalQueue
from commands.cli import main
from db.errors import NetworkFileSystem
from db.netfs import check_local, mount_of, read_mounts
from tests.kit import send
from tests.ops_kit import bodies, count


@pytest.fixture()
def fake_mounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A mount table with an NFS export at tmp/remote, and a local disk mounted inside it."""
    remote, nested = tmp_path / "remote", tmp_path / "remote" / "local disk"
    nested.mkdir(parents=True)
    table = tmp_path / "mounts"
    table.write_text(
        "/dev/vda / ext4 rw,relatime 0 0\n"
        "proc /proc proc rw 0 0\n"
        f"fileserver:/export/firehose {remote} nfs4 rw,relatime,vers=4.2 0 0\n"
        f"/dev/vdb {str(nested).replace(' ', chr(92) + '040')} xfs rw 0 0\n"
    )
    monkeypatch.setattr(netfs, "MOUNTS_PATH", str(table))
    return tmp_path


def _fs_type(path: Path) -> str:
    mount = mount_of(path)
    assert mount is not None
    return mount.fs_type


def test_longest_mount_point_wins(fake_mounts: Path) -> None:
    assert _fs_type(fake_mounts / "remote" / "firehose.db") == "nfs4"
    assert _fs_type(fake_mounts / "remote" / "local disk" / "firehose.db") == "xfs"
    assert _fs_type(fake_mounts / "remote-not-really" / "x.db") == "ext4"
    with pytest.raises(NetworkFileSystem, match="nfs4"):
        check_local(fake_mounts / "remote" / "firehose.db")
    assert check_local(fake_mounts / "remote" / "local disk" / "firehose.db") is None  # allowed
    assert check_local(fake_mounts / "remote" / "firehose.db", allow_network_fs=True) is None


@pytest.mark.parametrize("fs_type", ["nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs"])
def test_network_types(tmp_path: Path, fs_type: str) -> None:
    table = tmp_path / "mounts"
    table.write_text(f"/dev/sda1 / ext4 rw 0 0\nsrv:/x {tmp_path}/share {fs_type} rw 0 0\n")
    with pytest.raises(NetworkFileSystem):
        check_local(tmp_path / "share" / "db.sqlite", mounts_path=str(table))


def test_no_mount_table_means_no_refusal(tmp_path: Path) -> None:
    """Without /proc/self/mounts (not Linux) nothing is known about the file system, so nothing is
    refused; the same path under a table that names it a network mount is."""
    missing, path = str(tmp_path / "does-not-exist"), tmp_path / "share" / "db.sqlite"
    assert read_mounts(missing) == []
    assert mount_of(path, mounts_path=missing) is None
    assert check_local(path, mounts_path=missing) is None  # returned: allowed
    table = tmp_path / "mounts"
    table.write_text(f"srv:/x {tmp_path}/share nfs rw 0 0\n")
    with pytest.raises(NetworkFileSystem):
        check_local(path, mounts_path=str(table))


def test_worker_refuses_and_says_why(fake_mounts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queue_path = fake_mounts / "queue.db"
    queue = LocalQueue(queue_path)
    send(queue, bodies(seed=1, events=50))
    queue.close()
    db = fake_mounts / "remote" / "firehose.db"
    args = ["--until-empty", "--wait-seconds", "0", "--quiet", "--db", str(db), "--queue-url", f"local:{queue_path}"]

    assert main(args) == 3
    err = capsys.readouterr().err
    assert "nfs4" in err and "fileserver:/export/firehose" in err and "--allow-network-fs" in err
    assert "merge" in err  # it says what to do instead
    assert not db.exists()

    assert main([*args, "--allow-network-fs"]) == 0
    assert count(db, "events") > 0


def test_merge_and_reprocess_refuse_too(fake_mounts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local = fake_mounts / "host.db"
    queue = LocalQueue(fake_mounts / "q.db")
    send(queue, bodies(seed=2, events=20))
    queue.close()
    assert (
        main(
            [
                "--until-empty",
                "--wait-seconds",
                "0",
                "--quiet",
                "--db",
                str(local),
                "--queue-url",
                f"local:{fake_mounts / 'q.db'}",
            ]
        )
        == 0
    )
    target = fake_mounts / "remote" / "analyst.db"
    assert main(["merge", str(target), str(local)]) == 3
    assert "nfs4" in capsys.readouterr().err
    assert not target.exists()
    assert main(["reprocess-rejects", "--db", str(fake_mounts / "remote" / "x.db")]) == 3
    assert "nfs4" in capsys.readouterr().err
