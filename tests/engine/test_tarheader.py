"""The fast tar header path must give exactly tarfile's bytes for the entries it handles."""
from __future__ import annotations

import subprocess
import tarfile

from hypothesis import given, settings, strategies as st

from snapfs.engine.tarheader import header, slow_header

TYPES = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                         tarfile.BLKTYPE, tarfile.FIFOTYPE])
NAMES = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF, blacklist_characters="/"), min_size=1,
                max_size=60).map(lambda s: s.replace("\x00", "x"))


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(NAMES, min_size=1, max_size=4), typ=TYPES, mode=st.integers(0, 0o7777),
       uid=st.integers(0, 2**22), gid=st.integers(0, 2**22), mtime=st.integers(0, 2**34),
       size=st.integers(0, 2**34), link=st.text(max_size=120).map(lambda s: s.replace("\x00", "")),
       major=st.integers(0, 4095), minor=st.integers(0, 2**20 - 1),
       xattrs=st.sampled_from([(), (("user.a", b"1"),), (("security.capability", b"\x01\x00\xff"),)]))
def test_fast_path_matches_tarfile(parts, typ, mode, uid, gid, mtime, size, link, major, minor, xattrs):
    name = "/".join(parts)
    kw = {"typ": typ, "mode": mode, "uid": uid, "gid": gid, "mtime": mtime,
          "size": size if typ == tarfile.REGTYPE else 0, "linkname": link, "devmajor": major,
          "devminor": minor, "xattrs": xattrs}
    expected = slow_header(name + ("/" if typ == tarfile.DIRTYPE else ""), **kw)
    got = header(name, **kw)
    assert got == expected
    if len(got) == 512:  # a plain ustar block: tarfile reads back what was written
        ti = tarfile.TarInfo.frombuf(got, "utf-8", "surrogateescape")
        assert (ti.mode, ti.uid, ti.gid, ti.mtime, ti.type) == (mode, uid, gid, mtime, typ)


def test_whiteout_and_checksum_by_gnu_tar(tmp_path):
    data = header("dir/.wh.gone", typ=tarfile.REGTYPE, mode=0, uid=0, gid=0, mtime=0) + b"\0" * 1024
    (tmp_path / "t.tar").write_bytes(data)
    out = subprocess.run(["tar", "-tvf", str(tmp_path / "t.tar")], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "dir/.wh.gone" and out.stderr == ""
