"""binfmt_misc detection: fake /proc/sys/fs/binfmt_misc directories written as the kernel shows them, and the real one."""
from __future__ import annotations

import os

import pytest

from snapfs.errors import BuildError
from snapfs.platforms import Platform
from snapfs.run.emulation import BINFMT_DIR, check_can_run, find_handler, runs_natively

AMD64 = Platform.parse("linux/amd64")
ARM64 = Platform.parse("linux/arm64")


def entry(enabled: bool = True, *, interpreter: str = "/usr/bin/qemu-aarch64-static", flags: str = "OCF") -> str:
    return (f"{'enabled' if enabled else 'disabled'}\ninterpreter {interpreter}\nflags: {flags}\noffset 0\n"
            "magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n")


def binfmt(tmp_path, entries: dict[str, str], *, status: str | None = "enabled", name: str = "binfmt_misc") -> str:
    d = tmp_path / name
    d.mkdir()
    if status is not None:
        (d / "status").write_text(status + "\n")
        (d / "register").write_text("")
    for name, text in entries.items():
        (d / name).write_text(text)
    return str(d)


def test_an_enabled_fixed_handler_is_found(tmp_path):
    d = binfmt(tmp_path, {"qemu-arm": entry(interpreter="/usr/bin/qemu-arm-static"), "qemu-aarch64": entry()})
    h = find_handler("arm64", binfmt_dir=d)
    assert (h.name, h.interpreter, h.flags, h.fixed) == ("qemu-aarch64", "/usr/bin/qemu-aarch64-static", "OCF", True)
    assert check_can_run(ARM64, host=AMD64, binfmt_dir=d) == h
    assert find_handler("arm", binfmt_dir=d).name == "qemu-arm"
    assert find_handler("s390x", binfmt_dir=d) is None


def test_missing_disabled_or_switched_off_handlers_refuse_with_the_fix(tmp_path):
    cases = {
        "none": binfmt(tmp_path, {}, name="a"),
        "disabled entry": binfmt(tmp_path, {"qemu-aarch64": entry(False)}, name="b"),
        "binfmt off": binfmt(tmp_path, {"qemu-aarch64": entry()}, status="disabled", name="c"),
        "not mounted": binfmt(tmp_path, {}, status=None, name="d"),
        "other arch (armeb is not arm64)": binfmt(tmp_path, {"qemu-armeb": entry(), "qemu-aarch64_be": entry()},
                                                  name="e"),
    }
    for why, d in cases.items():
        assert find_handler("arm64", binfmt_dir=d) is None, why
        with pytest.raises(BuildError) as info:
            check_can_run(ARM64, host=AMD64, binfmt_dir=d, stage="stage build: ")
        assert info.value.message == (
            f"stage build: RUN steps for linux/arm64 need emulation on this amd64 host, and {d} has no enabled "
            "handler for aarch64 (install one, e.g. `docker run --privileged --rm tonistiigi/binfmt --install arm64` "
            "or Debian's qemu-user-binfmt)"), why
        assert info.value.exit_code == 8


def test_a_handler_without_the_fix_binary_flag_is_refused(tmp_path):
    d = binfmt(tmp_path, {"qemu-aarch64": entry(flags="OC")})
    assert find_handler("arm64", binfmt_dir=d).fixed is False
    with pytest.raises(BuildError, match=r"handler qemu-aarch64 lacks the F flag, so its interpreter "
                                         r"/usr/bin/qemu-aarch64-static would be looked for inside the image"):
        check_can_run(ARM64, host=AMD64, binfmt_dir=d)


def test_native_architectures_need_nothing(tmp_path):
    d = binfmt(tmp_path, {})
    assert check_can_run(AMD64, host=AMD64, binfmt_dir=d) is None
    assert check_can_run(Platform.parse("linux/386"), host=AMD64, binfmt_dir=d) is None  # x86-64 runs i386
    assert runs_natively(ARM64, ARM64) and not runs_natively(AMD64, ARM64)
    with pytest.raises(BuildError, match=r"RUN steps for windows/amd64 cannot run on a Linux builder"):
        check_can_run(Platform.parse("windows/amd64"), host=AMD64, binfmt_dir=d)


def test_the_real_binfmt_misc_directory():
    """Whatever this machine has registered, the answer agrees with a plain reading of the directory."""
    names = os.listdir(BINFMT_DIR) if os.path.isdir(BINFMT_DIR) else []
    status = ""
    if "status" in names:
        with open(os.path.join(BINFMT_DIR, "status")) as f:
            status = f.read().strip()
    for arch, qemu in (("arm64", "qemu-aarch64"), ("s390x", "qemu-s390x"), ("riscv64", "qemu-riscv64")):
        enabled = False
        if status == "enabled" and qemu in names:
            with open(os.path.join(BINFMT_DIR, qemu)) as f:
                enabled = f.readline().strip() == "enabled"
        found = find_handler(arch)
        assert (found is not None) == enabled or (found is not None and found.name != qemu), arch
    assert check_can_run(Platform.host()) is None
