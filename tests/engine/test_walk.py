"""The walker kernels: what they record, in which order, and that both backends agree byte for byte."""
from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from snapfs.engine import backend, rows, snapshot
from snapfs.errors import InputError
from treekit import T0, Dev, Dir, Fifo, File, Hardlink, Symlink, build

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep, VFS v2


def entries(kernel, root, **kw):
    recs, names, extras, _, _ = kernel.walk(root, **kw)
    return {e.path: e for e in (rows.decode(recs, names, extras, i) for i in range(rows.row_count(recs)))}


@pytest.fixture
def sample(tmp_path):
    root = str(tmp_path / "root")
    build(root, {
        "bin": Dir({"sh": File(b"#!", mode=0o4755, uid=5, gid=6, xattrs=(("security.capability", CAP),)),
                    "sh2": Hardlink("bin/sh")}),
        "etc": Dir({"passwd": File(b"root:x:0:0::/root:/bin/sh\n", mtime_ns=T0 + 123)}, mode=0o750,
                   xattrs=(("user.note", b"v\x00\xff"),)),
        "link": Symlink("etc/passwd"),
        "dirlink": Symlink("etc"),
        "fifo": Fifo(mode=0o600),
        "null": Dev(1, 3),
        "sda": Dev(8, 0, char=False),
        "tmp": Dir({}, mode=0o1777),
    })
    os.setxattr(os.path.join(root, "bin/sh"), "trusted.secret", b"no")
    return root


def test_records_every_field(kernel, sample):
    got = entries(kernel, sample)
    assert list(got) == ["bin", "bin/sh", "bin/sh2", "dirlink", "etc", "etc/passwd", "fifo", "link", "null",
                         "sda", "tmp"]
    sh, sh2 = got["bin/sh"], got["bin/sh2"]
    st = os.lstat(os.path.join(sample, "bin/sh"))
    assert (stat.S_IMODE(sh.mode), sh.uid, sh.gid, sh.size, sh.nlink) == (0o4755, 5, 6, 2, 2)
    assert (sh.ino, sh.dev, sh.mtime_ns, sh.ctime_ns) == (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns)
    assert sh2.ino == sh.ino
    # security.capability kept, trusted.* never recorded
    assert sh.xattrs == (("security.capability", CAP),)
    assert got["etc"].xattrs == (("user.note", b"v\x00\xff"),)
    assert stat.S_IMODE(got["etc"].mode) == 0o750 and got["etc"].is_dir
    assert got["etc/passwd"].mtime_ns == T0 + 123
    assert got["link"].link == "etc/passwd" and stat.S_ISLNK(got["link"].mode)
    assert got["dirlink"].link == "etc"
    assert stat.S_ISFIFO(got["fifo"].mode)
    assert stat.S_ISCHR(got["null"].mode) and got["null"].rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(got["sda"].mode) and got["sda"].rdev == os.makedev(8, 0)
    assert stat.S_IMODE(got["tmp"].mode) == 0o1777


def test_backends_agree_byte_for_byte(sample):
    fast, pure = backend.get("compiled"), backend.get("python")
    assert fast.walk(sample) == pure.walk(sample)
    assert fast.walk(sample, xattrs=False) == pure.walk(sample, xattrs=False)
    assert fast.walk(sample, ignore=("etc",)) == pure.walk(sample, ignore=("etc",))


def test_component_order_puts_subtrees_first(kernel, tmp_path):
    # bytewise "a-b" < "a/x", but a directory's subtree must follow it directly
    build(str(tmp_path), {"a": Dir({"x": File(), "y": Dir({"z": File()})}), "a-b": File(), "a.c": File(),
                          "A": File(), "\udcff": File()})
    got = list(entries(kernel, str(tmp_path)))
    assert got == ["A", "a", "a/x", "a/y", "a/y/z", "a-b", "a.c", "\udcff"]


def test_never_follows_symlinks(kernel, tmp_path):
    outside = tmp_path / "outside"
    build(str(outside), {"secret": File(b"s")})
    build(str(tmp_path / "root"), {"escape": Symlink(str(outside)), "loop": Symlink("loop")})
    got = entries(kernel, str(tmp_path / "root"))
    assert list(got) == ["escape", "loop"]


def test_ignore_list_skips_entries_and_subtrees(kernel, sample):
    got = entries(kernel, sample, ignore=("etc", "bin/sh2", "nonexistent"))
    assert "etc" not in got and "etc/passwd" not in got and "bin/sh2" not in got and "bin/sh" in got


def test_stays_on_one_filesystem(kernel, tmp_path):
    root = tmp_path / "root"
    build(str(root), {"mnt": Dir({}), "f": File()})
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / "mnt")], check=True)
    try:
        (root / "mnt" / "inside").write_bytes(b"x")
        one = entries(kernel, str(root))
        assert "mnt" in one and "mnt/inside" not in one
        assert one["mnt"].flags & rows.FLAG_MOUNTPOINT
        cross = entries(kernel, str(root), one_fs=False)
        assert "mnt/inside" in cross and not cross["mnt"].flags
    finally:
        subprocess.run(["umount", str(root / "mnt")], check=True)


def test_missing_root_is_a_clear_error(kernel, tmp_path):
    with pytest.raises(InputError, match=r"nope: cannot open directory: No such file or directory"):
        kernel.walk(str(tmp_path / "nope"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InputError, match=r"file: cannot open directory: Not a directory"):
        kernel.walk(str(tmp_path / "file"))


def test_unreadable_directory_names_the_path(kernel, tmp_path):
    # Root bypasses permissions: walk as nobody in a forked child (modules already loaded) to get EACCES.
    build(str(tmp_path / "r"), {"locked": Dir({"f": File()}, mode=0o700)})
    os.chmod(tmp_path, 0o755)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.chdir(tmp_path)  # pytest's base directory is private to root
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            kernel.walk("r")
            msg = "no error"
        except InputError as exc:
            msg = str(exc)
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            msg = repr(exc)
        os.write(write, msg.encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    msg = os.read(read, 4096).decode()
    os.close(read)
    assert msg == "r/locked: open directory failed: Permission denied"


def test_check_rows_detects_corruption(kernel, sample):
    recs, names, extras, _, _ = kernel.walk(sample)
    assert kernel.check_rows(recs, names, extras) == ""
    assert kernel.check_rows(recs, names[:-3], extras).startswith("name bounds")
    swapped = recs[rows.RECORD.size:2 * rows.RECORD.size] + recs[:rows.RECORD.size] + recs[2 * rows.RECORD.size:]
    assert kernel.check_rows(swapped, names, extras) == "order at row 1"
    assert kernel.check_rows(recs[:-1], names, extras) == "record size"


def test_racy_rows_selects_recent_regular_files(kernel, sample):
    recs, names, extras, _, _ = kernel.walk(sample)
    os.utime(os.path.join(sample, "etc/passwd"), ns=(T0 + 10**12, T0 + 10**12))
    recs, names, extras, _, _ = kernel.walk(sample)
    got = [rows.decode(recs, names, extras, i).path for i in kernel.racy_rows(recs, 2**62)]
    assert got == []  # nothing is that recent
    ctime_cut = rows.decode(recs, names, extras, 0).ctime_ns  # every entry was created about now
    got = [rows.decode(recs, names, extras, i).path for i in kernel.racy_rows(recs, ctime_cut)]
    assert got == ["bin/sh", "bin/sh2", "etc/passwd"]  # regular files only


def test_snapshot_hashes_racy_files_and_quiescent_waits(tmp_path):
    future = time.time_ns() + 10**9  # at or after the walk's start whatever the machine's speed: racy
    build(str(tmp_path), {"old": File(b"a"), "fresh": File(b"just written", mtime_ns=future)})
    os.utime(tmp_path, ns=(T0, T0))
    snap = snapshot.take(str(tmp_path))
    paths = [e.path for e in snap]
    fresh = paths.index("fresh")
    assert snap.hashes[fresh] == snapshot.content_hash(str(tmp_path / "fresh"))
    assert set(snap.hashes) <= {fresh, paths.index("old")}  # "old" only while its ctime is recent
    # quiescent: a few small racy files are hashed (cheaper than waiting) ...
    quiet = snapshot.take(str(tmp_path), quiescent=True)
    assert set(quiet.hashes) == set(snap.hashes) and quiet.racy_ns > 0
    # ... many are not: the snapshot waits until the racy window has passed instead.
    for i in range(70):
        (tmp_path / f"many{i}").write_bytes(b"x")
        os.utime(tmp_path / f"many{i}", ns=(future, future))
    quiet = snapshot.take(str(tmp_path), quiescent=True)
    assert quiet.hashes == {} and quiet.racy_ns == 0


def test_row_layout_has_one_owner(tmp_path):
    """rows builds, reads and counts records; nobody else indexes into them."""
    st = os.lstat(tmp_path)
    rec = rows.place_row(rows.stat_row(st), name_off=5, name_len=3, extra_off=7, extra_len=0)
    r = rows.row_at(rec, 0)
    assert (r.size, r.mode, r.ino, r.nlink) == (st.st_size, st.st_mode, st.st_ino, st.st_nlink)
    assert (r.name_off, r.name_len, r.extra_off, r.extra_len) == (5, 3, 0, 0)  # an empty extra has offset 0
    assert rows.row_name(rec, b"....." + b"abc", 0) == b"abc"
    assert rows.row_count(rec * 3) == 3 and list(rows.iter_rows(rec * 2)) == [r, r]
    with pytest.raises(ValueError, match="not a whole number of rows"):
        rows.row_count(rec[:-1])
