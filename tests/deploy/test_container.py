"""The CPU image built and run with podman, the way a user deploys it (`make test-container`).

No Docker engine and no public registry here: the base is a Debian bookworm made by mmdebstrap
(cached in podman's store between runs) and passed as ``BASE_IMAGE``. This machine's local pip
sources (wheel directories, CA bundle) reach the build through volumes and build arguments, so
nothing machine-specific goes into the Dockerfile. The container runs as the image's own
non-root user; the test waits for the image's HEALTHCHECK, makes one chat, one generate and one
edit over HTTP from the host, and stops it with SIGTERM. Then deploy/docker-compose.yml is
brought up once with podman-compose.
"""

from __future__ import annotations

import base64
import io
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from diptych.bench.server_process import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/diptych-base:bookworm"
IMAGE = "localhost/diptych:cpu"  # what deploy/docker-compose.yml runs
# python3-dev: torch compiles its CPU kernels against Python.h, as the python:slim images allow.
BASE_PACKAGES = "python3,python3-dev,python3-venv,python3-pip,make,curl,ca-certificates"
# crun refuses this machine's hybrid cgroups, and podman's default ulimits exceed its hard limits.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
SHUTDOWN_TIMEOUT_S = 20
PICTURE = ROOT / "docs" / "images" / "quickstart-picture.png"


@dataclass(frozen=True)
class Podman:
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {shlex.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
        return result

    def compose(self, *args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "podman_compose", "-f", str(ROOT / "deploy" / "docker-compose.yml"), *args]
        return subprocess.run(command, env={**self.env, **env}, capture_output=True, text=True, timeout=timeout,
                              check=False)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: apt-get install podman runc mmdebstrap)")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return Podman({**os.environ, "CONTAINERS_CONF": str(conf)})


def local_pip_sources() -> tuple[list[str], list[str]]:
    """Volumes and build args that hand this machine's local pip sources to a build."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    values: dict[str, list[str]] = {"find-links": [], "cert": []}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        option = key.rsplit(".", 1)[-1]
        if option in values:
            values[option] += shlex.split(value.strip().strip("'\""))
    for option, variable in (("find-links", "PIP_FIND_LINKS"), ("cert", "PIP_CERT")):
        values[option] += os.environ.get(variable, "").split()
    volumes, build_args = [], []
    wheel_dirs = sorted({d for d in values["find-links"] if Path(d).is_dir()})
    inside = [f"/mnt/pip/wheels{i}" for i in range(len(wheel_dirs))]
    for outside, mount in zip(wheel_dirs, inside):
        volumes += ["-v", f"{outside}:{mount}:ro"]
    if inside:
        build_args += ["--build-arg", f"PIP_FIND_LINKS={' '.join(inside)}"]
    certs = [c for c in values["cert"] if Path(c).is_file()]
    if certs:
        volumes += ["-v", f"{certs[0]}:/mnt/pip/ca.crt:ro"]
        build_args += ["--build-arg", "PIP_CERT=/mnt/pip/ca.crt"]
    return volumes, build_args


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        started = time.monotonic()
        rootfs = tmp_path_factory.mktemp("base") / "rootfs.tar"
        subprocess.run(["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs)],
                       check=True, capture_output=True, timeout=900)
        podman("import", str(rootfs), BASE_IMAGE, timeout=300)
        sys.stderr.write(f"\nbase {BASE_IMAGE}: made in {time.monotonic() - started:.0f} s\n")
    volumes, build_args = local_pip_sources()
    started = time.monotonic()
    # docker format: podman drops HEALTHCHECK from OCI-format images.
    podman("build", "--format", "docker", "--network", "host", *volumes, *build_args,
           "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-f", str(ROOT / "deploy" / "Dockerfile.cpu"),
           "-t", IMAGE, str(ROOT), timeout=1800)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    sys.stderr.write(f"\nimage {IMAGE}: built in {time.monotonic() - started:.0f} s, {size / 2**30:.2f} GiB\n")
    return IMAGE


def wait_healthy(podman: Podman, container: str, timeout_s: float = 420) -> float:
    """Seconds until the image's own HEALTHCHECK command passes."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        state = podman("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
        if state != "running":
            raise AssertionError(f"container {state}:\n{podman('logs', container, check=False).stderr[-6000:]}")
        if podman("healthcheck", "run", container, check=False).returncode == 0:
            return time.monotonic() - started
        time.sleep(3)
    raise AssertionError(f"not healthy after {timeout_s} s:\n{podman('logs', container, check=False).stderr[-6000:]}")


@pytest.fixture
def container(podman: Podman, image: str) -> Iterator[tuple[str, int]]:
    name, port = f"diptych-test-{os.getpid()}", free_port()
    podman("run", "-d", "--name", name, "--network", "host", "--shm-size", "1g",
           "-e", f"DIPTYCH_PORT={port}", "-e", f"DIPTYCH_SHUTDOWN_TIMEOUT_S={SHUTDOWN_TIMEOUT_S}", image)
    try:
        yield name, port
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def png_bytes(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def answer_draw_and_edit(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=300)
    model = client.models.list().data[0].id
    picture = base64.b64encode(PICTURE.read_bytes()).decode()
    chat = client.chat.completions.create(model=model, max_tokens=8, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{picture}"}},
        {"type": "text", "text": "what color is the square?"}]}])
    assert chat.choices[0].message.content.strip()
    drawn = client.images.generate(model=model, prompt="a red circle", extra_body={"seed": 1})
    assert png_bytes(drawn.data[0].b64_json).size == (64, 64)
    edited = client.images.edit(model=model, image=("picture.png", PICTURE.read_bytes(), "image/png"),
                                prompt="make the square green", extra_body={"seed": 2})
    assert png_bytes(edited.data[0].b64_json).size == (64, 64)


@pytest.mark.timeout(3600)
def test_the_cpu_image_serves_as_its_user_and_stops_cleanly_on_sigterm(podman: Podman,
                                                                        container: tuple[str, int]) -> None:
    name, port = container
    seconds = wait_healthy(podman, name)
    sys.stderr.write(f"\ncontainer healthy {seconds:.0f} s after start\n")
    user = podman("exec", name, "id", "-u").stdout.strip()
    assert user != "0" and user == podman("image", "inspect", "--format", "{{.Config.User}}", IMAGE).stdout.strip()

    answer_draw_and_edit(f"http://127.0.0.1:{port}")

    started = time.monotonic()
    podman("kill", "--signal", "TERM", name)
    code = podman("wait", name, timeout=SHUTDOWN_TIMEOUT_S + 30).stdout.strip()
    stopped = time.monotonic() - started
    assert code == "0", podman("logs", name, check=False).stderr[-6000:]
    assert stopped < SHUTDOWN_TIMEOUT_S + 10
    sys.stderr.write(f"container exited 0 {stopped:.1f} s after SIGTERM\n")


@pytest.mark.timeout(1800)
def test_compose_brings_the_image_up(podman: Podman, image: str) -> None:
    if subprocess.run([sys.executable, "-c", "import podman_compose"], capture_output=True).returncode != 0:
        pytest.skip("podman-compose is not installed")
    port, project = free_port(), f"diptych-compose-{os.getpid()}"
    env = {"HOST_PORT": str(port)}
    try:
        up = podman.compose("-p", project, "up", "-d", "--no-build", env=env)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        (container,) = podman("ps", "-q", "--filter", f"label=io.podman.compose.project={project}").stdout.split()
        wait_healthy(podman, container)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        podman.compose("-p", project, "down", "-t", "40", env=env)
