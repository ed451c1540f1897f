"""Real workloads on a Debian base (debootstrap from the machine's mirror): apt-get in RUN, and a multi-stage
build that compiles a C program with gcc and ships the binary in a busybox stage."""
from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.slow

HELLO_C = r"""
#include <stdio.h>
int main(void) { printf("compiled by gcc in a snapfs build\n"); return 0; }
"""


def test_multistage_gcc_into_busybox(run_build, debian_in_registry):
    b = run_build(
        "FROM debian:bookworm AS build\n"
        "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null "
        "&& rm -rf /var/lib/apt/lists/*\n"
        "WORKDIR /src\nCOPY hello.c .\nRUN gcc -static -O2 -o /hello hello.c\n"
        "FROM busybox\nCOPY --from=build /hello /usr/local/bin/hello\nCMD [\"/usr/local/bin/hello\"]\n",
        {"hello.c": HELLO_C})
    assert b.config["config"]["Cmd"] == ["/usr/local/bin/hello"]
    out = subprocess.run(["chroot", b.rootfs, "/usr/local/bin/hello"], capture_output=True, text=True, check=True)
    assert out.stdout == "compiled by gcc in a snapfs build\n"
    assert not os.path.exists(b.path("/usr/bin/gcc"))  # only the binary crossed over


def test_apt_get_install_inside_run(run_build, debian_in_registry):
    b = run_build("FROM debian:bookworm\n"
                  "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends jq >/dev/null "
                  "&& rm -rf /var/lib/apt/lists/*\nRUN jq --version > /jq-version\n")
    assert b.read("/jq-version").startswith(b"jq-1.6")
    status = b.read("/var/lib/dpkg/status").decode()
    assert "Package: jq\nStatus: install ok installed" in status
    assert os.listdir(b.path("/var/lib/apt/lists")) in ([], ["partial"])
