"""The one Platform value: parsing with Docker's normalisation, the host default, the error, the matching rule."""
from __future__ import annotations

import pytest

from snapfs.errors import SnapfsError, UsageError
from snapfs.platforms import Platform


def test_parse_normalises_as_docker_does():
    assert Platform.parse("linux/x86_64") == Platform("linux", "amd64")
    assert Platform.parse("Linux/AMD64") == Platform("linux", "amd64")
    assert Platform.parse("linux/aarch64") == Platform("linux", "arm64")
    assert str(Platform.parse("linux/arm64/v8")) == "linux/arm64/v8"
    assert Platform.parse("linux/arm/v7") == Platform("linux", "arm", "v7")
    assert Platform.parse("linux/arm/v6") == Platform("linux", "arm", "v6")
    assert Platform.parse("linux/arm") == Platform("linux", "arm", "v7")  # arm means arm/v7
    assert Platform.parse("linux/armv7l") == Platform("linux", "arm", "v7")
    assert Platform.parse("linux/armv6l") == Platform("linux", "arm", "v6")
    assert Platform.parse("linux/i686") == Platform("linux", "386")
    assert Platform.parse("arm64") == Platform("linux", "arm64")  # a lone architecture means Linux
    assert Platform.parse("x86_64") == Platform("linux", "amd64")


@pytest.mark.parametrize("bad", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_parse_rejects_with_one_usage_error(bad):
    with pytest.raises(UsageError) as info:
        Platform.parse(bad)
    assert info.value.message == f'invalid platform "{bad}": expected os/arch[/variant]'
    assert isinstance(info.value, SnapfsError) and info.value.exit_code == 2


def test_host_is_linux_and_normalised():
    host = Platform.host()
    assert host.os == "linux"
    assert Platform.parse(str(host)) == host


def test_matching_rule():
    assert Platform("linux", "arm64").matches(Platform("linux", "arm64", "v8"))
    assert Platform("linux", "arm64", "v8").matches(Platform("linux", "arm64"))
    assert Platform("linux", "arm").matches(Platform("linux", "arm", "v6"))  # no wanted variant: any
    assert not Platform("linux", "arm", "v7").matches(Platform("linux", "arm", "v6"))
    assert not Platform("linux", "arm", "v7").matches(Platform("linux", "arm"))
    assert not Platform("linux", "amd64").matches(Platform("windows", "amd64"))
    assert not Platform("linux", "amd64").matches(Platform("linux", "arm64"))


def test_json_round_trip_keeps_os_version():
    p = Platform("windows", "amd64", os_version="10.0.17763.1")
    assert p.to_json() == {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1"}
    assert Platform.from_json(p.to_json()) == p
    assert Platform.from_json({"os": "linux", "architecture": "arm64", "variant": None}) == Platform("linux", "arm64")
