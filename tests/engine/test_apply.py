"""Layer extraction: exact content and metadata, whiteouts, opaque directories, compression, diff_id."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from snapfs.engine.apply import ApplyStats, apply_layer, apply_layers
from snapfs.engine.compress import compressing_writer
from snapfs.engine.rootfs import RootFS
from snapfs.errors import InputError

T0 = 1_600_000_000
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, security.* xattrs)")


def entry(name, data=b"", kind=tarfile.REGTYPE, *, mode=0o644, uid=0, gid=0, mtime=T0, link="", pax=None,
          dev=(0, 0)):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime, ti.linkname = kind, mode, uid, gid, mtime, link
    ti.devmajor, ti.devminor = dev
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    ti.pax_headers = dict(pax or {})
    return ti, data


def d(name, **kw):
    return entry(name, kind=tarfile.DIRTYPE, mode=kw.pop("mode", 0o755), **kw)


def sym(name, target, **kw):
    return entry(name, kind=tarfile.SYMTYPE, link=target, mode=0o777, **kw)


def hard(name, target, **kw):
    return entry(name, kind=tarfile.LNKTYPE, link=target, **kw)


def tar_bytes(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.size else None)
    return buf.getvalue()


def compressed(plain: bytes, kind: str) -> bytes:
    out = io.BytesIO()
    writer = compressing_writer(kind, 3 if kind == "zstd" else 1, out)
    writer.write(plain)
    writer.close()
    return out.getvalue()


def layer(tmp_path: Path, entries, *, name="layer.tar", kind="none") -> Path:
    path = tmp_path / name
    path.write_bytes(compressed(tar_bytes(entries), kind))
    return path


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


def tree(top: Path) -> dict[str, str]:
    """A readable picture of a tree: path -> kind (and content or target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            rel = str(p.relative_to(top))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes().decode()
    return out


# --- content and metadata --------------------------------------------------------------------------------------

@needs_root
def test_regular_file_content_owner_mode_and_mtime(tmp_path, root):
    pax = {"mtime": "1600000000.123456789"}
    stats = apply_layer(layer(tmp_path, [
        entry("bin/su", b"#!suid", mode=0o4755, uid=1234, gid=5678, pax=pax),
        entry("bin/sg", b"sgid", mode=0o2711, uid=7, gid=8),
        entry("etc/conf", b"x" * 3_000_001, mode=0o600, uid=1, gid=2, mtime=T0 + 5),
    ]), root)
    su = os.lstat(root / "bin/su")
    assert (root / "bin/su").read_bytes() == b"#!suid"
    assert stat.S_IMODE(su.st_mode) == 0o4755 and (su.st_uid, su.st_gid) == (1234, 5678)
    assert su.st_mtime_ns == 1_600_000_000_123_456_789 and su.st_atime_ns == su.st_mtime_ns
    sg = os.lstat(root / "bin/sg")
    assert stat.S_IMODE(sg.st_mode) == 0o2711 and (sg.st_uid, sg.st_gid) == (7, 8)
    conf = os.lstat(root / "etc/conf")
    assert conf.st_size == 3_000_001 and stat.S_IMODE(conf.st_mode) == 0o600 and conf.st_mtime == T0 + 5
    # Implicit parents: 0755, owned by root.
    for p in ("bin", "etc"):
        st = os.lstat(root / p)
        assert stat.S_IMODE(st.st_mode) == 0o755 and (st.st_uid, st.st_gid) == (0, 0)
    assert (stats.entries, stats.whiteouts) == (3, 0)


@needs_root
def test_directories_sticky_owner_and_mtime_set_after_children(tmp_path, root):
    apply_layer(layer(tmp_path, [
        d("tmp/", mode=0o1777, uid=3, gid=4, mtime=T0 - 100),
        entry("tmp/a", b"a", mtime=T0),
        d("tmp/sub", mode=0o750, mtime=T0 - 200),
        entry("tmp/sub/b", b"b"),
    ]), root)
    st = os.lstat(root / "tmp")
    assert stat.S_IMODE(st.st_mode) == 0o1777 and (st.st_uid, st.st_gid) == (3, 4)
    assert st.st_mtime == T0 - 100
    assert os.lstat(root / "tmp/sub").st_mtime == T0 - 200


@needs_root
def test_symlink_target_owner_and_mtime(tmp_path, root):
    apply_layer(layer(tmp_path, [
        entry("target", b"t"),
        sym("abs", "/target", uid=11, gid=12, mtime=T0 + 1),
        sym("rel", "../../target"),
        sym("dangling", "nowhere/at/all"),
    ]), root)
    assert os.readlink(root / "abs") == "/target"
    assert os.readlink(root / "rel") == "../../target"
    assert os.readlink(root / "dangling") == "nowhere/at/all"
    st = os.lstat(root / "abs")
    assert (st.st_uid, st.st_gid) == (11, 12) and st.st_mtime == T0 + 1


def test_hardlinks_share_the_inode(tmp_path, root):
    apply_layer(layer(tmp_path, [entry("lower", b"L")], name="1.tar"), root)
    apply_layer(layer(tmp_path, [
        entry("usr/bin/python3.11", b"py", mode=0o755),
        hard("usr/bin/python3", "usr/bin/python3.11"),
        hard("./usr/bin/python", "./usr/bin/python3.11"),
        hard("also-lower", "lower"),
    ], name="2.tar"), root)
    a, b, c = (os.lstat(root / "usr/bin" / n) for n in ("python3.11", "python3", "python"))
    assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
    assert os.lstat(root / "also-lower").st_ino == os.lstat(root / "lower").st_ino


def test_hardlink_to_a_symlink_links_the_symlink_itself(tmp_path, root):
    apply_layer(layer(tmp_path, [sym("ln", "/etc/passwd"), hard("ln2", "ln")]), root)
    assert os.readlink(root / "ln2") == "/etc/passwd"
    assert os.lstat(root / "ln2").st_ino == os.lstat(root / "ln").st_ino


@needs_root
def test_fifo_and_device_nodes(tmp_path, root):
    apply_layer(layer(tmp_path, [
        entry("dev/null", kind=tarfile.CHRTYPE, mode=0o666, dev=(1, 3), uid=0, gid=5),
        entry("dev/loop0", kind=tarfile.BLKTYPE, mode=0o660, dev=(7, 0)),
        entry("dev/big", kind=tarfile.CHRTYPE, mode=0o600, dev=(4095, (1 << 20) - 1)),
        entry("run/pipe", kind=tarfile.FIFOTYPE, mode=0o620, mtime=T0 + 9),
    ]), root)
    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and stat.S_IMODE(null.st_mode) == 0o666
    assert (os.major(null.st_rdev), os.minor(null.st_rdev), null.st_gid) == (1, 3, 5)
    loop = os.lstat(root / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 0)
    big = os.lstat(root / "dev/big")
    assert (os.major(big.st_rdev), os.minor(big.st_rdev)) == (4095, (1 << 20) - 1)
    pipe = os.lstat(root / "run/pipe")
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o620 and pipe.st_mtime == T0 + 9


@needs_root
def test_xattrs_user_and_capability_applied_trusted_skipped(tmp_path, root):
    cap = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep
    pax = {
        "SCHILY.xattr.user.x": "hello",
        "SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.trusted.overlay.opaque": "y",
    }
    apply_layer(layer(tmp_path, [
        entry("bin/ping", b"ELF", mode=0o755, uid=5, gid=5, pax=pax),
        d("data", pax={"SCHILY.xattr.user.dir": "d"}),
    ]), root)
    assert os.getxattr(root / "bin/ping", "user.x") == b"hello"
    assert os.getxattr(root / "bin/ping", "security.capability") == cap  # survived chown and chmod
    assert "trusted.overlay.opaque" not in os.listxattr(root / "bin/ping")
    assert os.getxattr(root / "data", "user.dir") == b"d"


@needs_root
def test_gnu_tar_layer_round_trips_metadata(tmp_path, root):
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/file").write_bytes(b"data")
    os.chown(src / "a/b/file", 42, 43)
    os.chmod(src / "a/b/file", 0o4750)  # after chown, which clears setuid
    os.setxattr(src / "a/b/file", "user.k", b"v")
    os.symlink("b/file", src / "a/link")
    os.link(src / "a/b/file", src / "a/hard")
    os.mkfifo(src / "a/fifo", 0o640)
    for p in ("a/b/file", "a/b", "a"):
        os.utime(src / p, ns=(T0 * 10**9, T0 * 10**9))
    tar = tmp_path / "gnu.tar"
    subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "--format=pax", "--numeric-owner",
                    "-C", str(src), "-cf", str(tar), "."], check=True)
    stats = apply_layer(tar, root)
    f = os.lstat(root / "a/b/file")
    assert (stat.S_IMODE(f.st_mode), f.st_uid, f.st_gid, f.st_mtime) == (0o4750, 42, 43, T0)
    assert os.getxattr(root / "a/b/file", "user.k") == b"v"
    assert os.readlink(root / "a/link") == "b/file"
    assert os.lstat(root / "a/hard").st_ino == f.st_ino
    assert stat.S_ISFIFO(os.lstat(root / "a/fifo").st_mode)
    assert os.lstat(root / "a").st_mtime == T0 and os.lstat(root / "a/b").st_mtime == T0
    assert stats.diff_id == "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()


def test_same_owner_false_keeps_our_ids(tmp_path, root):
    apply_layer(layer(tmp_path, [entry("f", b"x", uid=999, gid=999, mode=0o640)]), root, same_owner=False)
    st = os.lstat(root / "f")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()) and stat.S_IMODE(st.st_mode) == 0o640


def test_names_are_normalized_and_on_entry_sees_them(tmp_path, root):
    seen = []
    apply_layer(layer(tmp_path, [
        d("./"), d("./a/"), entry("./a//b", b"1"), entry("a/c/", b"2"), sym("a/./s", "b"),
        entry("long/" + "n" * 200, b"3"), d("a/.wh..wh..opq"),
    ]), root, on_entry=lambda path, ti: seen.append((path, ti.name)))
    assert [p for p, _ in seen] == ["", "a", "a/b", "a/c", "a/s", "long/" + "n" * 200, "a/.wh..wh..opq"]
    assert tree(root) == {"a": "dir", "a/b": "1", "a/c": "2", "a/s": "-> b", "long": "dir",
                          "long/" + "n" * 200: "3"}


@needs_root
def test_root_entry_updates_root_metadata(tmp_path, root):
    apply_layer(layer(tmp_path, [d(".", mode=0o700, uid=8, gid=9, mtime=T0), entry("f", b"")]), root)
    st = os.lstat(root)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o700, 8, 9, T0)


# --- replacing entries of another type -------------------------------------------------------------------------

def test_type_changes_replace_the_old_entry(tmp_path, root):
    apply_layer(layer(tmp_path, [
        d("was-dir"), entry("was-dir/child", b"c"), entry("was-file", b"f"), sym("was-link", "was-file"),
        d("stays-dir", mode=0o755), entry("stays-dir/kept", b"k"),
    ], name="1.tar"), root)
    apply_layer(layer(tmp_path, [
        entry("was-dir", b"now a file"), d("was-file"), entry("was-link", b"now a file too"),
        d("stays-dir", mode=0o700),
    ], name="2.tar"), root)
    assert tree(root) == {"was-dir": "now a file", "was-file": "dir", "was-link": "now a file too",
                          "stays-dir": "dir", "stays-dir/kept": "k"}
    assert stat.S_IMODE(os.lstat(root / "stays-dir").st_mode) == 0o700


def test_apply_layers_in_order(tmp_path, root):
    paths = [layer(tmp_path, [entry("f", b"one"), entry("g", b"g")], name="1.tar"),
             layer(tmp_path, [entry("f", b"two"), entry(".wh.g")], name="2.tar"),
             layer(tmp_path, [entry("h", b"three")], name="3.tar")]
    stats = apply_layers(paths, root)
    assert tree(root) == {"f": "two", "h": "three"}
    assert [(s.entries, s.whiteouts) for s in stats] == [(2, 0), (1, 1), (1, 0)]


# --- whiteouts -------------------------------------------------------------------------------------------------

def lower(tmp_path, root):
    apply_layer(layer(tmp_path, [
        d("d"), entry("d/old1", b"o1"), d("d/sub"), entry("d/sub/old2", b"o2"), entry("d/keep-if-not-opq", b"k"),
        d("other"), entry("other/x", b"x"), entry("other/y", b"y"), d("tree"), entry("tree/deep/z", b"z"),
    ], name="lower.tar"), root)


def test_whiteouts_delete_lower_files_and_trees(tmp_path, root):
    lower(tmp_path, root)
    stats = apply_layer(layer(tmp_path, [
        entry("other/.wh.x"), entry(".wh.tree"), entry("other/.wh.never-existed"), entry("nodir/.wh.nothing"),
    ], name="upper.tar"), root)
    assert "other/x" not in tree(root) and "tree" not in tree(root)
    assert tree(root)["other/y"] == "y"
    assert not (root / "other/.wh.x").exists() and not (root / ".wh.tree").exists()
    assert (stats.entries, stats.whiteouts) == (0, 4)


def test_whiteout_spares_what_the_same_layer_wrote(tmp_path, root):
    lower(tmp_path, root)
    apply_layer(layer(tmp_path, [
        entry("other/x", b"new x"), entry("other/.wh.x"),  # marker after the layer's own entry
        entry("tree/deep/mine", b"m"), entry(".wh.tree"),  # lower contents of tree go, this layer's stay
    ], name="upper.tar"), root)
    t = tree(root)
    assert t["other/x"] == "new x"
    assert {k: v for k, v in t.items() if k.startswith("tree")} == {"tree": "dir", "tree/deep": "dir",
                                                                     "tree/deep/mine": "m"}


OPAQUE_EXPECTED = {"d": "dir", "d/new": "n", "d/sub": "dir", "d/sub/new2": "n2", "other": "dir", "other/x": "x",
                   "other/y": "y", "tree": "dir", "tree/deep": "dir", "tree/deep/z": "z"}


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_opaque_directory_wherever_the_marker_sits(tmp_path, root, where):
    lower(tmp_path, root)
    own = [d("d"), entry("d/new", b"n"), d("d/sub"), entry("d/sub/new2", b"n2")]
    marker = entry("d/.wh..wh..opq")
    at = {"first": 0, "middle": 2, "last": len(own)}[where]
    stats = apply_layer(layer(tmp_path, own[:at] + [marker] + own[at:], name="upper.tar"), root)
    assert tree(root) == OPAQUE_EXPECTED
    assert stats.whiteouts == 1


def test_opaque_marker_hides_lower_contents_of_a_dir_the_layer_rewrites(tmp_path, root):
    lower(tmp_path, root)
    apply_layer(layer(tmp_path, [d("d"), d("d/sub"), entry("d/.wh..wh..opq")], name="upper.tar"), root)
    assert {k for k in tree(root) if k.startswith("d")} == {"d", "d/sub"}


def test_opaque_marker_at_the_root(tmp_path, root):
    lower(tmp_path, root)
    apply_layer(layer(tmp_path, [entry("other/y", b"new y"), entry(".wh..wh..opq")], name="upper.tar"), root)
    assert tree(root) == {"other": "dir", "other/y": "new y"}


def test_aufs_metadata_is_skipped(tmp_path, root):
    seen = []
    stats = apply_layer(layer(tmp_path, [
        d(".wh..wh.plnk"), entry(".wh..wh.plnk/123.456", b"x"), entry(".wh..wh.aufs"), d(".wh..wh.orph"),
        entry("real", b"r"),
    ]), root, on_entry=lambda p, ti: seen.append(p))
    assert tree(root) == {"real": "r"} and seen == ["real"] and (stats.entries, stats.whiteouts) == (1, 0)


# --- inputs, compression and diff_id ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_compressed_inputs_and_diff_id(tmp_path, root, kind):
    entries = [d("a"), entry("a/f", os.urandom(200_000)), sym("a/l", "f")]
    plain = tar_bytes(entries)
    path = tmp_path / f"layer.{kind}"
    path.write_bytes(compressed(plain, kind))
    stats = apply_layer(path, root)
    assert stats == ApplyStats(entries=3, whiteouts=0, bytes=len(plain),
                               diff_id="sha256:" + hashlib.sha256(plain).hexdigest())
    assert (root / "a/f").read_bytes() == entries[1][1]


def test_bzip2_xz_and_file_objects(tmp_path, root):
    import bz2
    import lzma
    plain = tar_bytes([entry("f", b"x")])
    for blob in (bz2.compress(plain), lzma.compress(plain)):
        stats = apply_layer(io.BytesIO(blob), root)
        assert stats.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert tree(root) == {"f": "x"}


def test_trailing_bytes_after_the_end_marker_count_in_the_diff_id(tmp_path, root):
    plain = tar_bytes([entry("f", b"x")]) + b"\0" * 4096
    stats = apply_layer(io.BytesIO(plain), root)
    assert stats.bytes == len(plain) and stats.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()


def test_empty_layers(tmp_path, root):
    for blob in (b"", b"\0" * 1024):
        stats = apply_layer(io.BytesIO(blob), root)
        assert (stats.entries, stats.bytes) == (0, len(blob))
    assert tree(root) == {}


def test_missing_layer_file_and_root_are_input_errors(tmp_path, root):
    with pytest.raises(InputError, match=r"nope\.tar: cannot read layer: No such file or directory"):
        apply_layer(tmp_path / "nope.tar", root)
    with pytest.raises(InputError, match=r"no-root: cannot open root directory"):
        apply_layer(layer(tmp_path, [entry("f")]), tmp_path / "no-root")


# --- rootfs resolver -------------------------------------------------------------------------------------------

def test_rootfs_resolves_symlinks_inside_the_root(tmp_path, root):
    (root / "real/dir").mkdir(parents=True)
    os.symlink("/real", root / "abs")
    os.symlink("../../../../real/dir", root / "up")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    with RootFS(root) as rootfs:
        for path, expected in [("abs/dir/x", "real/dir"), ("up/x", "real/dir"), ("../../real/x", "real"),
                               ("abs", ""), ("", None)]:
            fd, name = rootfs.resolve(path)
            try:
                if expected is None:
                    assert name == "." and os.path.samestat(os.fstat(fd), os.lstat(root))
                else:
                    assert os.path.samestat(os.fstat(fd), os.lstat(root / expected))
                    assert name == path.rsplit("/", 1)[-1]
            finally:
                os.close(fd)
        fd, name = rootfs.resolve("abs", follow=True)
        os.close(fd)
        assert name == "real"
        with pytest.raises(OSError) as exc:
            rootfs.resolve("loop1/x")
        assert exc.value.strerror == "too many levels of symbolic links"
        fd, name = rootfs.resolve("abs/new/deeper/x", make_parents=True)
        os.close(fd)
        assert (root / "real/new/deeper").is_dir() and stat.S_IMODE(os.lstat(root / "real/new").st_mode) == 0o755
        assert rootfs.remove("real") and not (root / "real").exists() and not rootfs.remove("real")
        assert rootfs.lstat("abs") is not None and rootfs.lstat("missing/x") is None
    shutil.rmtree(root)


# --- without the capabilities (a real unprivileged process, not a mock) ----------------------------------------

_APPLY = """
import sys
from snapfs.engine.apply import apply_layer
from snapfs.errors import LayerError
try:
    stats = apply_layer(sys.argv[1], sys.argv[2], same_owner={same_owner})
except LayerError as exc:
    print(exc)
    sys.exit(exc.exit_code)
print("ok", stats.entries)
"""


def run_without(caps: str, layer_path: Path, root: Path, *, same_owner=None) -> subprocess.CompletedProcess:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop capabilities")
    return subprocess.run(["setpriv", f"--bounding-set={caps}", sys.executable, "-c",
                           _APPLY.format(same_owner=same_owner), str(layer_path), str(root)],
                          capture_output=True, text=True, timeout=60)


def test_mknod_without_cap_mknod_is_refused_clearly(tmp_path, root):
    path = layer(tmp_path, [entry("dev/null", kind=tarfile.CHRTYPE, mode=0o666, dev=(1, 3))])
    proc = run_without("-mknod", path, root)
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout.strip() == (f"{path}: dev/null: cannot create device node: permission denied "
                                   "(needs root or CAP_MKNOD)")


def test_chown_without_cap_chown(tmp_path, root):
    path = layer(tmp_path, [entry("f", b"x", uid=5, gid=6, mode=0o4755)])
    proc = run_without("-chown", path, root, same_owner=True)
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout.strip() == (f"{path}: f: cannot change owner to 5:6: permission denied "
                                   "(run as root or pass same_owner=False)")
    assert not os.path.lexists(root / "f")  # a file the applier could not finish is removed
    proc = run_without("-chown", path, root, same_owner=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok 1"), proc.stderr
    st = os.lstat(root / "f")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o4755)


def test_cached_parent_is_forgotten_when_a_directory_is_replaced(tmp_path):
    """The applier caches parent directory fds; a later entry replacing that directory must not write into
    the detached old one (nor anywhere outside the root)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind, data in (("a/", tarfile.DIRTYPE, b""), ("a/b/", tarfile.DIRTYPE, b""),
                                 ("a/b/x", tarfile.REGTYPE, b"x"), ("a", tarfile.SYMTYPE, b""),
                                 ("other/", tarfile.DIRTYPE, b""), ("a/b/y", tarfile.REGTYPE, b"y")):
            ti = tarfile.TarInfo(name)
            ti.type, ti.size = kind, len(data)
            if kind == tarfile.SYMTYPE:
                ti.linkname = "other"
            t.addfile(ti, io.BytesIO(data))
    root = tmp_path / "root"
    root.mkdir()
    from snapfs.engine.apply import apply_layer

    apply_layer(io.BytesIO(buf.getvalue()), str(root))
    assert os.readlink(root / "a") == "other"
    assert (root / "other/b/y").read_bytes() == b"y"  # through the new symlink, inside the root
    assert not (root / "other/b/x").exists()


def test_kept_paths_are_never_touched(tmp_path):
    """Unpacking over a container's own root: mount points and the builder's own directory stay as they are."""
    import io
    import tarfile

    root = tmp_path / "root"
    (root / "var/run/secrets").mkdir(parents=True)
    (root / "var/run/secrets/token").write_text("sa-token")
    (root / "snapfs").mkdir()
    (root / "snapfs/tool").write_text("builder")
    (root / "var/old").write_text("lower")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        entries = [("var/run", tarfile.SYMTYPE, b"", "/run"),  # would replace the dir holding the mount
                   ("var/.wh..wh..opq", tarfile.REGTYPE, b"", ""),  # opaque /var: spares var/run
                   ("snapfs/tool", tarfile.REGTYPE, b"evil", ""), (".wh.snapfs", tarfile.REGTYPE, b"", ""),
                   ("etc/os-release", tarfile.REGTYPE, b"debian", "")]
        for name, kind, data, link in entries:
            ti = tarfile.TarInfo(name)
            ti.type, ti.size, ti.linkname = kind, len(data), link
            t.addfile(ti, io.BytesIO(data))
    from snapfs.engine.apply import apply_layer

    apply_layer(io.BytesIO(buf.getvalue()), str(root), keep=("var/run/secrets", "snapfs"))
    assert (root / "var/run/secrets/token").read_text() == "sa-token" and (root / "var/run").is_dir()
    assert (root / "snapfs/tool").read_text() == "builder"
    assert not (root / "var/old").exists()  # the opaque marker still hid the rest of /var
    assert (root / "etc/os-release").read_text() == "debian"
