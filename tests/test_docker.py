"""The compose file and the images: parsed everywhere, `docker compose config` where the CLI has compose.

Each service's command must be one the CLI accepts, and every Ray process must share the token auth.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hpo_service.cli import build_parser

DOCKER = Path(__file__).resolve().parents[1] / "docker"
README = DOCKER.parent / "README.md"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SECRETS = {"RAY_AUTH_TOKEN": "t" * 64, "HPO_API_TOKEN": "a" * 32, "POSTGRES_PASSWORD": "p" * 16}
# What torch.compile builds with when a trial runs: Triton compiles its launchers with the C compiler against
# Python.h (and the C library's headers), Inductor's C++ needs g++. Compiled here as Triton builds a launcher.
COMPILE_PROBE = (
    "printf '#include <Python.h>\\nint probe(void) { return PY_MAJOR_VERSION; }\\n' | gcc -shared -fPIC -x c - "
    '-o /tmp/probe.so -I"$(python -c \'import sysconfig; print(sysconfig.get_paths()["include"])\')" '
    "&& printf 'int main() { return 0; }\\n' | g++ -x c++ - -o /tmp/probe"
)


def dockerfile_stages() -> dict[str, str]:
    """Each named stage of the Dockerfile: its text from its FROM line to the next, continued lines joined."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    parts = re.split(r"^(?=FROM )", text, flags=re.M)
    return {m.group(1): part for part in parts if (m := re.match(r"FROM \S+ AS (\w+)$", part, flags=re.M))}


def apt_packages(stage: str) -> set[str]:
    """The packages a stage's ``apt-get install`` commands name."""
    commands = re.findall(r"apt-get install ([^&\n]*)", stage)
    return {word for command in commands for word in command.split() if not word.startswith("-")}


def shell_commands(service: dict) -> list[list[str]]:
    """The command lines a service runs, splitting `sh -c "a && exec b"` into its parts."""
    command = service.get("command", [])
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(part.strip().removeprefix("exec ")) for part in command[2].split("&&")]
    return [command]


def test_the_stack_has_the_database_the_controller_and_a_ray_cluster():
    assert set(SERVICES) == {"postgres", "controller", "ray-head", "ray-worker"}
    assert "postgres-data" in COMPOSE["volumes"]
    assert any(v.startswith("postgres-data:") for v in SERVICES["postgres"]["volumes"])
    assert all("healthcheck" in service for service in SERVICES.values())
    gpus = SERVICES["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpus["capabilities"] == ["gpu"]


def test_the_controller_migrates_then_serves_with_commands_the_cli_accepts():
    first, second = shell_commands(SERVICES["controller"])
    assert first == ["hpo", "db", "upgrade"]
    assert second[:2] == ["hpo", "serve"]
    for command in (first, second):
        build_parser().parse_args(command[1:])  # exits (SystemExit) on an unknown option


def test_the_controller_is_configured_by_environment_only_and_points_at_the_services():
    controller = SERVICES["controller"]
    assert "volumes" not in controller and "env_file" not in controller
    env = controller["environment"]
    assert re.fullmatch(r"postgresql://hpo:\$\{POSTGRES_PASSWORD\}@postgres:5432/hpo", env["HPO_DATABASE_URL"])
    assert env["RAY_ADDRESS"].split("#")[0].strip() == "ray://ray-head:10001"
    assert "HPO_API_TOKEN" in env
    assert controller["ports"] == ["127.0.0.1:8000:8000"]  # published on the host's loopback only


@pytest.mark.parametrize("name", ["controller", "ray-head", "ray-worker"])
def test_every_ray_process_uses_the_shared_token(name):
    env = SERVICES[name]["environment"]
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")


def test_workers_join_the_head_the_controller_talks_to():
    head = SERVICES["ray-head"]["command"]
    assert head[:3] == ["ray", "start", "--head"] and "--port=6379" in head
    assert "--address=ray-head:6379" in SERVICES["ray-worker"]["command"]


def test_the_images_compose_builds_exist_in_the_dockerfile():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\w+)$", dockerfile, flags=re.M))
    for service in SERVICES.values():
        if "build" in service:
            assert service["build"]["target"] in stages
            assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert "torch==2.13.0" in dockerfile  # the version pyproject pins


def test_the_gpu_image_has_what_torch_compile_builds_with_at_run_time():
    cuda = dockerfile_stages()["cuda"]
    python = re.search(r"^RUN (python3\.\d+) -m venv ", cuda, flags=re.M).group(1)  # the venv's interpreter
    assert {"gcc", "g++", "libc6-dev", f"{python}-dev"} <= apt_packages(cuda)


def test_one_gpu_worker_per_host_so_that_ray_counts_each_gpu_once():
    worker = SERVICES["ray-worker"]["deploy"]
    assert worker["resources"]["reservations"]["devices"][0]["count"] == "all"  # every GPU of the host ...
    assert worker["replicas"] == 1  # ... to one Ray node
    for text in ((DOCKER / "compose.yaml").read_text(), README.read_text()):
        assert not re.search(r"--scale[ =]ray-worker=(?!1\b)", text)


@pytest.mark.skipif(
    shutil.which("docker") is None or os.environ.get("HPO_TEST_DOCKER_BUILD") != "1",
    reason="builds the GPU image (several GB): only where docker is and HPO_TEST_DOCKER_BUILD=1",
)
def test_the_built_gpu_image_compiles_a_python_extension_and_cpp():
    tag = "completedp-hpo:cuda-test"
    build = ["docker", "build", "-f", str(DOCKER / "Dockerfile"), "--target", "cuda", "-t", tag, str(DOCKER.parent)]
    subprocess.run(build, check=True)
    probe = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", tag, "-c", COMPILE_PROBE], capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="no docker compose CLI on this machine",
)
def test_docker_compose_accepts_the_file():
    result = subprocess.run(
        ["docker", "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
        env={**os.environ, **SECRETS},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
