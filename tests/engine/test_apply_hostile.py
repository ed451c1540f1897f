"""Hostile and broken layers: each is refused with one pinned line, or lands inside the root, and nothing
outside the root is touched."""
from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from snapfs.engine.apply import apply_layer, apply_layers
from snapfs.errors import InputError, LayerError

T0 = 1_600_000_000


def entry(name, data=b"", kind=tarfile.REGTYPE, *, mode=0o644, link="", pax=None, dev=(0, 0)):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, T0, link
    ti.devmajor, ti.devminor = dev
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    ti.pax_headers = dict(pax or {})
    return ti, data


def d(name, mode=0o755):
    return entry(name, kind=tarfile.DIRTYPE, mode=mode)


def sym(name, target):
    return entry(name, kind=tarfile.SYMTYPE, link=target, mode=0o777)


def hard(name, target):
    return entry(name, kind=tarfile.LNKTYPE, link=target)


def tar_bytes(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.size else None)
    return buf.getvalue()


class Env:
    """A root, a sentinel directory beside it, and a picture of everything outside the root."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.root = tmp_path / "root"
        self.layers = tmp_path / "layers"
        self.outside = tmp_path / "outside"
        for p in (self.root, self.layers, self.outside):
            p.mkdir()
        (self.outside / "secret").write_text("keep me")
        os.chmod(self.outside / "secret", 0o600)
        os.chmod(self.outside, 0o751)
        self.before = self.picture()
        self.count = 0

    def picture(self) -> dict:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.base):
            rel_dir = Path(dirpath).relative_to(self.base)
            if rel_dir.parts and rel_dir.parts[0] in ("root", "layers"):
                continue
            for n in [".", *dirnames, *filenames]:
                p = Path(dirpath, n)
                if rel_dir == Path(".") and n in ("root", "layers"):
                    continue
                st = os.lstat(p)
                data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
                out[str(rel_dir / n)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink, data)
        return out

    def layer(self, entries, *, raw: bytes | None = None) -> Path:
        self.count += 1
        path = self.layers / f"{self.count}.tar"
        path.write_bytes(raw if raw is not None else tar_bytes(entries))
        return path

    def refused(self, entries, message: str, *, raw: bytes | None = None, **kw) -> str:
        """Apply a layer that must be refused; the message must contain ``message``; outside untouched."""
        path = self.layer(entries, raw=raw)
        with pytest.raises(LayerError) as exc:
            apply_layer(path, self.root, **kw)
        text = str(exc.value)
        assert text.startswith(f"{path}: ") and message in text, text
        assert "\n" not in text
        self.assert_outside_untouched()
        return text

    def assert_outside_untouched(self) -> None:
        assert (self.outside / "secret").read_text() == "keep me"
        assert stat.S_IMODE(os.lstat(self.outside / "secret").st_mode) == 0o600
        assert stat.S_IMODE(os.lstat(self.outside).st_mode) == 0o751
        assert self.picture() == self.before


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.assert_outside_untouched()


# --- names ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "a/b/../../../outside/secret", "..", "./.."])
def test_dotdot_names_are_refused(env, name):
    text = env.refused([entry("ok", b"1"), entry(name, b"pwned")], "'..' in name is not allowed")
    assert text.endswith(f": {name}: '..' in name is not allowed")
    assert not (env.base / "escape").exists()


def test_absolute_names_land_inside_the_root(env):
    """Docker and containerd take a leading slash as the layer's root; the real path is never touched."""
    target = str(env.outside / "secret")
    apply_layer(env.layer([entry(target, b"inside"), d("/tmp"), entry("/tmp/x", b"x"), entry("//etc//./y", b"y")]),
                env.root)
    assert (env.root / target.lstrip("/")).read_bytes() == b"inside"
    assert (env.root / "tmp/x").read_bytes() == b"x" and (env.root / "etc/y").read_bytes() == b"y"


@pytest.mark.parametrize("name", ["/../escape", "/a/../../escape", "//..//escape"])
def test_absolute_names_climbing_out_are_refused(env, name):
    env.refused([entry(name, b"pwned")], f"{name}: '..' in name is not allowed")
    assert not (env.base / "escape").exists() and not os.path.lexists("/escape")


def test_nul_and_empty_names_are_refused(env):
    env.refused([entry("x", pax={"path": "a\x00b"})], "'a\\x00b': name contains a NUL byte")
    env.refused([entry("")], ": '': empty name")


def test_whiteout_named_directory_is_refused(env):
    env.refused([entry("a/.wh.b/c", b"x")], "a/.wh.b/c: a whiteout name cannot be a directory")


# --- symlinks planted by earlier layers -------------------------------------------------------------------------

def test_absolute_symlink_parent_lands_inside_the_root(env):
    planted = env.layer([sym("etc", str(env.outside))])
    upper = env.layer([entry("etc/passwd", b"root::0:0"), entry("etc/secret", b"overwritten")])
    apply_layers([planted, upper], env.root)
    inside = env.root / str(env.outside).lstrip("/")
    assert (inside / "passwd").read_bytes() == b"root::0:0"
    assert (inside / "secret").read_bytes() == b"overwritten"
    env.assert_outside_untouched()


def test_relative_symlink_climbing_out_is_clamped_at_the_root(env):
    planted = env.layer([sym("a", "../../.."), sym("b", "a/../../outside")])
    upper = env.layer([entry("a/x", b"x"), entry("b/secret", b"overwritten")])
    apply_layers([planted, upper], env.root)
    assert (env.root / "x").read_bytes() == b"x"
    assert (env.root / "outside/secret").read_bytes() == b"overwritten"
    assert not (env.base / "x").exists()


def test_symlink_loop_is_refused(env):
    apply_layer(env.layer([sym("loop1", "loop2"), sym("loop2", "/loop1")]), env.root)
    env.refused([entry("loop1/x", b"x")], "loop1/x: too many levels of symbolic links")


def test_file_over_symlink_replaces_the_symlink(env):
    apply_layer(env.layer([sym("s", str(env.outside / "secret"))]), env.root)
    apply_layer(env.layer([entry("s", b"pwned", mode=0o777)]), env.root)
    assert (env.root / "s").read_bytes() == b"pwned" and not (env.root / "s").is_symlink()


def test_directory_entry_over_symlink_does_not_chmod_the_target(env):
    apply_layer(env.layer([sym("link", str(env.outside)), sym("rel", "../../outside")]), env.root)
    apply_layer(env.layer([d("link", mode=0o777), d("rel", mode=0o700)]), env.root)
    for name in ("link", "rel"):
        assert (env.root / name).is_dir() and not (env.root / name).is_symlink()
    assert stat.S_IMODE(os.lstat(env.root / "link").st_mode) == 0o777


def test_device_and_fifo_over_symlink_replace_it(env):
    apply_layer(env.layer([sym("p", str(env.outside / "secret"))]), env.root)
    apply_layer(env.layer([entry("p", kind=tarfile.FIFOTYPE, mode=0o666)]), env.root)
    assert stat.S_ISFIFO(os.lstat(env.root / "p").st_mode)


def test_whiteouts_through_symlinks_stay_inside(env):
    apply_layer(env.layer([sym("w", str(env.outside)), sym("r", "../outside")]), env.root)
    apply_layer(env.layer([entry("w/.wh.secret"), entry("r/.wh.secret"), entry("w/.wh..wh..opq"),
                           entry("r/.wh..wh..opq")]), env.root)
    assert (env.root / "w").is_symlink() and (env.root / "r").is_symlink()
    apply_layer(env.layer([entry(".wh.w")]), env.root)
    assert not os.path.lexists(env.root / "w")


def test_removing_a_tree_unlinks_its_symlinks_and_never_follows_them(env):
    (env.root / "t/sub/deeper").mkdir(parents=True)
    os.symlink(env.outside, env.root / "t/sub/out")
    os.symlink(env.outside / "secret", env.root / "t/sub/deeper/secret")
    os.symlink("../../..", env.root / "t/sub/deeper/up")
    apply_layer(env.layer([entry(".wh.t")]), env.root)
    assert os.listdir(env.root) == []  # the fixture checks that nothing outside changed


# --- hardlinks --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, message", [
    ("../outside/secret", "h: '..' in hardlink target is not allowed"),
    ("a/../../outside/secret", "h: '..' in hardlink target is not allowed"),
])
def test_hardlink_with_dotdot_target_is_refused(env, target, message):
    env.refused([hard("h", target)], message)


def test_hardlink_with_absolute_target_links_inside_the_root(env):
    apply_layer(env.layer([entry("usr/bin/b", b"busybox"), hard("usr/bin/a", "/usr/bin/b"),
                           hard("/usr/bin/c", "//usr/bin/./b")]), env.root)
    ino = os.lstat(env.root / "usr/bin/b").st_ino
    assert os.lstat(env.root / "usr/bin/a").st_ino == ino == os.lstat(env.root / "usr/bin/c").st_ino
    assert os.lstat(env.root / "usr/bin/b").st_nlink == 3


def test_hardlink_with_absolute_target_outside_is_looked_up_inside(env):
    target = str(env.outside / "secret")
    env.refused([hard("h", target)], f"h: hardlink target {target.lstrip('/')} does not exist")
    env.refused([hard("h", "/../outside/secret")], "h: '..' in hardlink target is not allowed")
    assert os.lstat(env.outside / "secret").st_nlink == 1


def test_hardlink_through_a_symlink_to_outside_is_resolved_inside(env):
    apply_layer(env.layer([sym("esc", str(env.outside))]), env.root)
    env.refused([hard("stolen", "esc/secret")], "stolen: hardlink target esc/secret does not exist")
    assert not os.path.lexists(env.root / "stolen")


def test_hardlink_to_symlink_to_outside_links_the_symlink(env):
    apply_layer(env.layer([sym("ln", str(env.outside / "secret")), hard("h", "ln")]), env.root)
    assert os.lstat(env.root / "h").st_ino == os.lstat(env.root / "ln").st_ino
    assert os.lstat(env.outside / "secret").st_nlink == 1


def test_hardlink_to_missing_or_directory_is_refused(env):
    env.refused([hard("h", "nothing")], "h: hardlink target nothing does not exist")
    env.refused([d("dir"), hard("h", "dir")], "h: hardlink target dir is a directory")
    env.refused([hard("h", "./")], "h: hardlink to the root directory")


# --- whiteouts --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, message", [
    (".wh.", "invalid whiteout '.wh.': it must name an entry"),
    ("a/.wh..", "invalid whiteout '.wh..': it must name an entry"),
    (".wh...", "invalid whiteout '.wh...': it must name an entry"),
    ("a/.wh..wh.evil", "unsupported whiteout '.wh..wh.evil'"),
])
def test_bad_whiteout_names_are_refused(env, name, message):
    (env.root / "a").mkdir()
    (env.root / "a/keep").write_text("k")
    env.refused([entry(name)], f"{name}: {message}")
    assert (env.root / "a/keep").read_text() == "k"


# --- root entry -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [".", "./", ".//."])
def test_root_entry_that_is_not_a_directory_is_refused(env, name):
    (env.root / "kept").write_text("k")
    env.refused([sym(name, str(env.outside))], f"{name}: the root entry must be a directory")
    env.refused([entry(name, b"file")], "the root entry must be a directory")
    env.refused([hard(name, "kept")], "the root entry must be a directory")
    assert (env.root / "kept").read_text() == "k" and env.root.is_dir()


def test_root_directory_entry_only_updates_root_metadata(env):
    (env.root / "kept").write_text("k")
    apply_layer(env.layer([d("./", mode=0o750)]), env.root)
    assert stat.S_IMODE(os.lstat(env.root).st_mode) == 0o750 and (env.root / "kept").read_text() == "k"


# --- device numbers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dev", [(4096, 0), (0, 1 << 20), (1 << 20, 1 << 20)])
def test_bad_device_numbers_are_refused(env, dev):
    env.refused([entry("dev/x", kind=tarfile.CHRTYPE, dev=dev)], f"dev/x: bad device number {dev[0]}:{dev[1]}")
    assert not os.path.lexists(env.root / "dev/x")


# --- bombs and broken streams -----------------------------------------------------------------------------------

def test_decompression_bomb_stops_at_max_bytes(env):
    bomb = gzip.compress(tar_bytes([entry("zeros", b"\0" * (4 << 20))]))
    assert len(bomb) < 10_000
    env.refused([], "decompressed size exceeds the limit of 65536 bytes", raw=bomb, max_bytes=65536)
    assert not (env.root / "zeros").exists() or os.path.getsize(env.root / "zeros") <= 65536


def test_plain_tar_over_max_bytes_is_refused(env):
    env.refused([entry("f", b"x" * 100_000)], "decompressed size exceeds the limit of 10000 bytes",
                max_bytes=10_000)


def test_not_a_tar_is_refused(env):
    env.refused([], "not a valid tar", raw=os.urandom(3000))


def test_truncated_member_data_is_refused(env):
    raw = tar_bytes([entry("a", b"1"), entry("big", b"y" * 5000)])
    env.refused([], "big: corrupt or truncated tar data: unexpected end of data", raw=raw[:512 * 3 + 1000])


def with_typeflag(raw: bytes, flag: bytes) -> bytes:
    """Change the first header's type (tarfile writes size 0 for types it does not know)."""
    block = bytearray(raw[:512])
    block[156:157] = flag
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + raw[512:]


def test_truncated_data_of_a_skipped_member_is_refused(env):
    raw = with_typeflag(tar_bytes([entry("big", b"y" * 5000)]), b"V")  # unknown type: data is skipped
    env.refused([], "corrupt or truncated tar at offset 5632: unexpected end of data", raw=raw[:1500])


SECOND = 1024  # one header and one data block for a one-byte file


def test_truncated_header_is_refused(env):
    raw = tar_bytes([entry("a", b"1"), entry("b", b"2")])
    env.refused([], f"truncated tar: the stream ends inside the header at offset {SECOND}",
                raw=raw[:SECOND + 100])


def test_corrupt_header_after_the_first_member_is_refused(env):
    raw = bytearray(tar_bytes([entry("a", b"1"), entry("b", b"2")]))
    one = SECOND
    raw[one:one + 512] = b"\x7f" * 512
    env.refused([], f"corrupt tar header at offset {one}", raw=bytes(raw))


def test_corrupt_and_truncated_gzip_are_refused(env):
    blob = gzip.compress(tar_bytes([entry("a", os.urandom(20000))]))
    env.refused([], "corrupt or truncated compressed data", raw=blob[: len(blob) // 2])
    broken = bytearray(blob)
    broken[20:60] = b"\0" * 40
    env.refused([], "corrupt or truncated compressed data", raw=bytes(broken))


def test_unreadable_layer_is_an_input_error(env):
    with pytest.raises(InputError, match=rf"^{env.layers}: cannot read layer: Is a directory$"):
        apply_layer(env.layers, env.root)


def test_error_names_layer_entry_and_reason_on_one_line(env):
    path = env.layer([entry("../x", b"")])
    with pytest.raises(LayerError) as exc:
        apply_layer(path, env.root)
    assert str(exc.value) == f"{path}: ../x: '..' in name is not allowed"
    assert exc.value.exit_code == 4
    with pytest.raises(LayerError) as exc:
        apply_layer(io.BytesIO(path.read_bytes()), env.root)
    assert str(exc.value) == "layer: ../x: '..' in name is not allowed"
