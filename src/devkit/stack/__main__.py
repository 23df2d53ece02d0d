"""``make image``, ``make stack-up``, ``make stack-down``: compose.yaml's stack in containers.

    python -m devkit.stack image|up|down|status

Settings (environment): ``CONTAINER_ENGINE`` (docker or podman; default: the first that works),
``OFFLINE=1`` (no image registry: a Debian base by debootstrap and stand-in images, with
compose.offline.yaml), ``REPLICAS`` (API containers, 2), ``LB_PORT`` (nginx, 8080),
``DASHBOARD_HOST_PORT`` (5006), ``PROMETHEUS_HOST_PORT`` (9090), ``GRAFANA_HOST_PORT`` (3000),
``STACK_PROJECT`` (names of containers, network and volumes: imgclf), ``STACK_TIMEOUT_S`` (600).

Secrets are random on first use: the admin token in ``.env`` (mode 600, as ``make run`` does;
``make token`` prints it), the stack's others only in ``.secrets/`` (a folder only its owner
enters). They reach the containers as files (compose ``secrets:``), never as variables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from devkit.stack import compose
from devkit.stack.engine import BASE_IMAGE, Engine, StackError, find, make_base
from imgclf.config import PROJECT_ROOT

#: The variable a secret stands for -> the compose secret (a file in .secrets/) that carries it.
SECRETS = {
    "POSTGRES_PASSWORD": "postgres_password",
    "IMGCLF_ADMIN_TOKEN": "imgclf_admin_token",
    "DASHBOARD_PASSWORD": "dashboard_password",
    "DASHBOARD_COOKIE_SECRET": "dashboard_cookie_secret",
    "GRAFANA_ADMIN_PASSWORD": "grafana_admin_password",
}
STATE_DIR = PROJECT_ROOT / ".stack"


def version() -> str:
    import tomllib

    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]


def compose_files(offline: bool) -> list[Path]:
    files = [PROJECT_ROOT / "compose.yaml"]
    return [*files, PROJECT_ROOT / "compose.offline.yaml"] if offline else files


def ensure_secrets(env_file: Path, secrets_dir: Path) -> dict[str, str]:
    """Every secret of the stack, random on first use, as a file in ``secrets_dir``.

    The admin token is ``.env``'s (mode 600), the one ``make run`` and ``make token`` use; the
    stack's other secrets live only in ``secrets_dir``, so that ``make run``, which loads
    ``.env``, never sees them. The folder is the owner's only (0700); its files are readable
    (0644) because each container bind-mounts its files and runs as a user of its own, which
    never sees the folder.
    """
    from devkit.launch import ensure_secret

    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    secrets_dir.chmod(0o700)
    values = {}
    for variable, name in SECRETS.items():
        path = secrets_dir / name
        if variable == "IMGCLF_ADMIN_TOKEN":
            values[variable] = ensure_secret(variable, env_file)
        elif path.is_file() and path.read_text():
            values[variable] = path.read_text()
            continue
        else:
            values[variable] = secrets.token_urlsafe(24)
        if path.is_file() and path.read_text() == values[variable]:
            continue
        temporary = secrets_dir / f".{name}.tmp"
        temporary.unlink(missing_ok=True)
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
            f.write(values[variable])
        temporary.chmod(0o644)  # whatever the umask
        os.replace(temporary, path)
    return values


def _settings(offline: bool) -> tuple[dict, dict[str, str]]:
    from dotenv import dotenv_values

    environment = {k: v for k, v in dotenv_values(PROJECT_ROOT / ".env").items() if v is not None}
    environment.update(os.environ)  # as compose: the shell's variables win over .env's
    environment.setdefault("IMGCLF_VERSION", version())
    if offline:
        environment["PYTHON_IMAGE"] = BASE_IMAGE
    try:
        return compose.load(compose_files(offline), environment), environment
    except (compose.UnsupportedKey, compose.MissingVariable) as error:
        raise StackError(str(error)) from None


def build_images(engine: Engine, document: dict, profiles: set[str], offline: bool, force=False):
    """Build (or, online, pull) each image the stack needs that is missing; ``force``: rebuild
    the project's own image even if it exists (``make image``)."""
    seen: set[str] = set()
    for name, service in compose.active_services(document, profiles).items():
        image = service["image"]
        if image in seen:
            continue
        seen.add(image)
        own = image.startswith("imgclf:")
        if engine.image_exists(image) and not force and (not own or _current(engine, image)):
            continue
        build = service.get("build")
        if build is None:
            if offline:
                raise StackError(f"{name}: {image} is missing and OFFLINE=1 pulls nothing")
            print(f"pulling {image}")
            engine.command("pull", image, capture=False)
            continue
        build = {"context": build} if isinstance(build, str) else build
        arguments = dict(build.get("args") or {})
        if arguments.get("PYTHON_IMAGE") == BASE_IMAGE or "deploy/offline" in build["context"]:
            make_base(engine)
        context = PROJECT_ROOT / build["context"]
        started = time.time()
        print(f"building {image} ({engine.name})")
        labels = {SOURCE_LABEL: source_digest()} if own else {}
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        engine.build(image, context, dockerfile, arguments, labels, STATE_DIR)
        print(f"built {image} in {time.time() - started:.0f} s")


#: The image's label naming the digest of what it was built from (``source_digest``).
SOURCE_LABEL = "imgclf.source"
#: What the project's image is built from: a change to any of them rebuilds it at stack-up.
SOURCES = (
    "Dockerfile",
    "requirements.lock",
    "pyproject.toml",
    "src",
    "notebooks",
    "deploy/entrypoint.sh",
    "deploy/healthcheck.py",
)


def source_digest() -> str:
    """SHA-256 of the files the project's image is built from (names and contents)."""
    digest = hashlib.sha256()
    for name in SOURCES:
        root = PROJECT_ROOT / name
        files = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
                digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _current(engine: Engine, image: str) -> bool:
    """Whether ``image`` was built from the sources as they are now."""
    result = engine.command("image", "inspect", "--format", "{{json .Config.Labels}}", image)
    labels = json.loads(result.stdout or "null") or {}
    if labels.get(SOURCE_LABEL) != source_digest():
        print(f"{image} was built from other sources: rebuilding (cached layers: seconds)")
        return False
    return True


def check_ports(ports: list[tuple[str, int]]) -> None:
    for address, port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError as error:
                raise StackError(
                    f"port {port} on {address} is in use ({error.strerror}): choose another "
                    "(LB_PORT, DASHBOARD_HOST_PORT, PROMETHEUS_HOST_PORT, GRAFANA_HOST_PORT)"
                ) from None


def up(engine: Engine, project: str, offline: bool, timeout_s: float) -> None:
    """Start the stack and wait until every service is healthy; on failure remove what started.

    Raises:
        StackError: the stack is already up, a port is taken, a build failed, or a service did
            not become healthy (its last log lines are printed).
    """
    profiles = {p for p in os.environ.get("COMPOSE_PROFILES", "").split(",") if p}
    ensure_secrets(PROJECT_ROOT / ".env", PROJECT_ROOT / ".secrets")
    document, _ = _settings(offline)
    running = engine.containers(project, all_states=False)
    if running:
        raise StackError(
            f"the stack {project!r} is already up ({len(running)} containers: "
            f"{', '.join(sorted(running)[:4])}...): make stack-down first"
        )
    _remove(engine, engine.containers(project))  # leftovers of a stack that died
    check_ports(compose.published_ports(document, profiles))
    build_images(engine, document, profiles, offline)
    plan = compose.containers(document, project, PROJECT_ROOT, profiles)
    started: list[str] = []
    try:
        if engine.command("network", "inspect", f"{project}_default", check=False).returncode:
            engine.command("network", "create", f"{project}_default")
        _start(engine, document, plan, started, timeout_s)
    except BaseException:
        left = engine.containers(project)  # by label: also one whose run failed half-way
        print(f"removing the {len(left)} containers started", file=sys.stderr)
        _remove(engine, left)
        engine.command("network", "rm", f"{project}_default", check=False)
        raise


def _start(engine: Engine, document: dict, plan, started: list[str], timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    by_service: dict[str, list[compose.Container]] = {}
    for container in plan:
        by_service.setdefault(container.service, []).append(container)
    for container in plan:
        service = document["services"][container.service]
        for dependency, condition in compose.dependencies(service).items():
            _wait(engine, by_service.get(dependency, []), condition, deadline)
        engine.command("run", *container.arguments)
        started.append(container.name)
        print(f"started {container.name}")
    for containers in by_service.values():
        if not containers[0].one_shot:
            _wait(engine, containers, "service_healthy", deadline)
    print(f"every service is up ({len(started)} containers)")


def _wait(engine: Engine, containers, condition: str, deadline: float) -> None:
    for container in containers:
        while not _satisfied(engine, container, condition):
            if time.time() > deadline:
                print(engine.logs(container.name), file=sys.stderr)
                raise StackError(f"{container.name} did not become {condition.split('_', 1)[1]}")
            time.sleep(1)


def _satisfied(engine: Engine, container: compose.Container, condition: str) -> bool:
    details = engine.inspect(container.name)
    if details is None:
        raise StackError(f"{container.name} is gone (removed while the stack started?)")
    state = details.get("State", {})
    if condition == "service_completed_successfully" or container.one_shot:
        if state.get("Running", True):
            return False
        if state.get("ExitCode") != 0:
            print(engine.logs(container.name), file=sys.stderr)
            raise StackError(f"{container.name} exited with {state.get('ExitCode')}")
        return True
    if not state.get("Running"):
        return False
    return condition != "service_healthy" or not container.health or engine.healthy(container.name)


def _remove(engine: Engine, names: list[str]) -> None:
    if names:
        grace = ["--time", "10"] if engine.name == "podman" else []  # docker kills at once
        engine.command("rm", "--force", *grace, *names, check=False)


def down(engine: Engine, project: str) -> None:
    """Stop the stack (each container within its grace period) and remove its containers and
    network; the volumes (database, models, data, reports) are kept."""
    names = engine.containers(project)
    if not names:
        print(f"the stack {project!r} is not up")
    front = [n for n in names if "-db-" not in n]
    for group in (front, [n for n in names if n not in front]):  # the database last
        if group:
            engine.command("stop", *group, check=False, timeout=900)
    _remove(engine, names)
    engine.command("network", "rm", f"{project}_default", check=False)
    print(f"stopped {len(names)} containers; volumes kept ({project}_shared, {project}_database)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.stack", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", choices=["image", "up", "down", "status"])
    args = parser.parse_args(argv)
    offline = os.environ.get("OFFLINE", "0") not in ("", "0")
    project = os.environ.get("STACK_PROJECT", "imgclf")
    try:
        engine = find(os.environ.get("CONTAINER_ENGINE") or None, STATE_DIR)
        if args.action == "image":
            document, _ = _settings(offline)
            build_images(engine, document, set(), offline, force=True)
        elif args.action == "up":
            up(engine, project, offline, float(os.environ.get("STACK_TIMEOUT_S", "600")))
            port = os.environ.get("LB_PORT", "8080")
            print(f"API: http://127.0.0.1:{port}  (admin token: make token)")
        elif args.action == "down":
            down(engine, project)
        else:
            label = f"label=imgclf.stack={project}"
            engine.command("ps", "--all", "--filter", label, capture=False)
    except (StackError, ValueError, subprocess.TimeoutExpired) as error:
        print(f"make stack: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
