"""User and group names of a real container's processes come from the container's own passwd and group files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest_containers import PODMAN_RUN, podman_image_ref, test_rootfs  # noqa: F401
from tests.integration.sensor_process import SensorProcess, get

pytestmark = pytest.mark.kernel

# a container that runs a while (its first documents may go out before its files are read: ids only then),
# then execs a last long-lived shell whose document must carry the names
LIFE = "for i in 1 2 3 4 5 6; do sleep 0.3; /bin/true tick; done; exec sh -c 'sleep 0.3' named-late"


def test_a_container_user_is_named_as_its_image_names_it(podman_image_ref: str, tmp_path: Path) -> None:  # noqa: F811
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\nmallory:x:4242:4343::/:/bin/sh\n")
    group = tmp_path / "group"
    group.write_text("root:x:0:\nintruders:x:4343:\n")
    name = f"cs-names-{os.getpid()}"
    with SensorProcess() as sensor:
        done = subprocess.run([*PODMAN_RUN, "--rm", "--name", name, "--user", "4242:4343",
                               "-v", f"{passwd}:/etc/passwd:ro", "-v", f"{group}:/etc/group:ro",
                               podman_image_ref, "sh", "-c", LIFE],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        late = sensor.wait_for(lambda d: get(d, "container.name") == name
                               and get(d, "process.args") == ["sh", "-c", "sleep 0.3", "named-late"],
                               timeout=20)[0]
        subprocess.run(["/bin/true", "host-named"], check=True)
        host = sensor.wait_for(lambda d: get(d, "process.args") == ["/bin/true", "host-named"], timeout=10)[0]
    assert get(late, "user.id") == "4242" and get(late, "user.name") == "mallory"
    assert get(late, "group.id") == "4343" and get(late, "group.name") == "intruders"
    assert get(late, "process.user.name") == "mallory" and get(late, "process.real_group.name") == "intruders"
    assert get(host, "user.name") == "root"  # host processes keep the host's names
