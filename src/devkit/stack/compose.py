"""compose.yaml read as the one description of the stack, and turned into engine commands.

``make stack-up`` runs the stack with the engine's plain command line (``docker run`` or
``podman run``), not with a compose tool: Debian's podman 4.3 with podman-compose ignores
health conditions and scaling, and breaks on one-shot services. Only the part of the compose
format that compose.yaml uses is understood; any other key is refused by name
(``UnsupportedKey``), so that the file cannot say something this runner would silently skip.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

#: The keys of a service this runner understands.
SERVICE_KEYS = {
    "build",
    "image",
    "command",
    "environment",
    "volumes",
    "ports",
    "expose",
    "read_only",
    "tmpfs",
    "cap_drop",
    "security_opt",
    "stop_grace_period",
    "restart",
    "healthcheck",
    "depends_on",
    "deploy",
    "secrets",
    "profiles",
}
TOP_KEYS = {"services", "secrets", "volumes"}
#: The keys understood inside a service's mappings; forms not listed (long-form ports,
#: volumes or secrets, a list of environment entries) are refused too.
NESTED_KEYS = {
    "build": {"context", "dockerfile", "args"},
    "deploy": {"replicas"},
    "healthcheck": {"test", "interval", "timeout", "retries", "start_period", "disable"},
}
STRING_LISTS = ("volumes", "ports", "expose", "secrets", "tmpfs", "cap_drop", "security_opt")
_VARIABLE = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


class UnsupportedKey(ValueError):
    """compose.yaml uses a key that this runner does not carry out."""


class MissingVariable(ValueError):
    """A ``${NAME:?message}`` variable is not set."""


def interpolate(text: str, environment: Mapping[str, str]) -> str:
    """Compose's variables: ``$$``, ``${X}``, ``${X:-default}``, ``${X-default}``, ``${X:?m}``."""

    def value(match: re.Match) -> str:
        if match.group(1) == "$":
            return "$"
        name, operator, argument = match.group(2), match.group(3), match.group(4) or ""
        current = environment.get(name)
        colon = operator is not None and operator.startswith(":")
        unset = current is None or (colon and not current)
        if operator in (":?", "?") and unset:
            raise MissingVariable(f"{name}: {argument or 'required'}")
        if operator in (":-", "-") and unset:
            return argument
        return current or ""

    return _VARIABLE.sub(value, text)


def _interpolate_all(node, environment: Mapping[str, str]):
    if isinstance(node, str):
        return interpolate(node, environment)
    if isinstance(node, list):
        return [_interpolate_all(item, environment) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_all(value, environment) for key, value in node.items()}
    return node


def merge(base: dict, override: dict) -> dict:
    """Compose's override rule for what compose.yaml uses: mappings merge, the rest replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(files: list[Path], environment: Mapping[str, str] | None = None) -> dict:
    """The merged, interpolated document of ``files`` (later files override earlier ones).

    Raises:
        UnsupportedKey: a key this runner would not carry out.
        MissingVariable: a required variable is not set.
    """
    document: dict = {}
    for path in files:
        document = merge(document, yaml.safe_load(path.read_text()) or {})
    document = {k: v for k, v in document.items() if not k.startswith("x-")}
    for key in document:
        if key not in TOP_KEYS:
            raise UnsupportedKey(f"{files[0].name}: top-level key {key!r} is not supported")
    for name, service in document.get("services", {}).items():
        _check_service(name, service)
    return _interpolate_all(document, os.environ if environment is None else environment)


def _check_service(name: str, service: dict) -> None:
    for key, value in service.items():
        if key not in SERVICE_KEYS:
            raise UnsupportedKey(f"service {name!r}: key {key!r} is not supported")
        if key in NESTED_KEYS and isinstance(value, dict):
            for inner in value:
                if inner not in NESTED_KEYS[key]:
                    raise UnsupportedKey(f"service {name!r}: {key}.{inner} is not supported")
        if key in STRING_LISTS and not all(isinstance(item, str) for item in value):
            raise UnsupportedKey(f"service {name!r}: {key} in long form is not supported")
        if key == "environment" and not isinstance(value, dict):
            raise UnsupportedKey(f"service {name!r}: environment as a list is not supported")


def seconds(duration: str | int) -> int:
    """``90s``, ``10m``, ``1m30s`` or a number of seconds."""
    if isinstance(duration, int):
        return duration
    total = 0
    for number, unit in re.findall(r"(\d+)([hms]?)", str(duration)):
        total += int(number) * {"h": 3600, "m": 60, "s": 1, "": 1}[unit]
    return total


@dataclass
class Container:
    """One container of the stack: its name, its service and the arguments of ``run``."""

    name: str
    service: str
    image: str
    arguments: list[str] = field(default_factory=list)
    one_shot: bool = False  # runs to completion (others wait for its success)
    health: bool = True  # has a health check (its own or the image's)


def replicas(service: dict) -> int:
    return int(service.get("deploy", {}).get("replicas", 1))


def active_services(document: dict, profiles: set[str]) -> dict[str, dict]:
    """The services to start: those without a profile, and those of an active profile."""
    return {
        name: service
        for name, service in document["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & profiles
    }


def start_order(services: dict[str, dict]) -> list[str]:
    """The services in an order where each comes after what it depends on."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ValueError(f"depends_on forms a cycle: {' -> '.join((*path, name))}")
        for dependency in dependencies(services[name]):
            if dependency in services:
                visit(dependency, (*path, name))
        order.append(name)

    for name in services:
        visit(name, ())
    return order


def dependencies(service: dict) -> dict[str, str]:
    """``{service: condition}`` of ``depends_on`` (a list means ``service_started``)."""
    depends = service.get("depends_on", {})
    if isinstance(depends, list):
        return {name: "service_started" for name in depends}
    return {
        name: (spec or {}).get("condition", "service_started") for name, spec in depends.items()
    }


def containers(document: dict, project: str, root: Path, profiles: set[str]) -> list[Container]:
    """Every container of the stack, in start order, with its ``run`` arguments."""
    services = active_services(document, profiles)
    secrets = document.get("secrets", {})
    awaited = {
        dependency
        for service in services.values()
        for dependency, condition in dependencies(service).items()
        if condition == "service_completed_successfully"
    }
    result = []
    for name in start_order(services):
        service = services[name]
        for index in range(1, replicas(service) + 1):
            container = _container(project, root, name, index, service, secrets)
            container.one_shot = name in awaited
            result.append(container)
    return result


def _container(project: str, root: Path, name: str, index: int, service: dict, secrets: dict):
    arguments = [
        "--detach",
        "--name",
        f"{project}-{name}-{index}",
        "--label",
        f"imgclf.stack={project}",
        "--label",
        f"imgclf.service={name}",
        "--network",
        f"{project}_default",
        "--network-alias",
        name,
        "--hostname",
        f"{name}-{index}",
    ]
    if service.get("read_only"):
        arguments.append("--read-only")
    arguments += [f"--tmpfs={path}" for path in service.get("tmpfs", [])]
    arguments += [f"--cap-drop={cap}" for cap in service.get("cap_drop", [])]
    arguments += [f"--security-opt={option}" for option in service.get("security_opt", [])]
    if "stop_grace_period" in service:
        arguments.append(f"--stop-timeout={seconds(service['stop_grace_period'])}")
    restart = service.get("restart", "no")
    arguments.append(f"--restart={restart}")
    for key, value in (service.get("environment") or {}).items():
        arguments += ["--env", f"{key}={'' if value is None else value}"]
    for spec in service.get("volumes", []):
        arguments.append(f"--volume={_volume(project, root, spec)}")
    for secret in service.get("secrets", []):
        source = (root / secrets[secret]["file"]).resolve()
        arguments.append(f"--volume={source}:/run/secrets/{secret}:ro")
    arguments += [f"--publish={port}" for port in service.get("ports", [])]
    arguments += _healthcheck(service.get("healthcheck"))
    health = not (service.get("healthcheck") or {}).get("disable", False)
    command = service.get("command") or []
    return Container(
        name=f"{project}-{name}-{index}",
        service=name,
        image=service["image"],
        arguments=[*arguments, service["image"], *command],
        health=health,
    )


def _volume(project: str, root: Path, spec: str) -> str:
    source, _, rest = spec.partition(":")
    if source.startswith((".", "/")):
        return f"{(root / source).resolve()}:{rest}"
    return f"{project}_{source}:{rest}"


def _healthcheck(check: dict | None) -> list[str]:
    """``--health-*`` arguments; the command in shell form, which docker and podman both take."""
    if not check:
        return []
    if check.get("disable"):
        return ["--no-healthcheck"]
    test = check["test"]
    if isinstance(test, str):
        command = test
    elif test[0] == "CMD-SHELL":
        command = test[1]
    else:
        command = shlex.join(test[1:] if test[0] == "CMD" else test)
    arguments = [f"--health-cmd={command}"]
    for key in ("interval", "timeout", "retries", "start_period"):
        if key in check:
            arguments.append(f"--health-{key.replace('_', '-')}={check[key]}")
    return arguments


def published_ports(document: dict, profiles: set[str]) -> list[tuple[str, int]]:
    """``(host address, port)`` of every port the stack publishes on this host."""
    result = []
    for service in active_services(document, profiles).values():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            address = parts[0] if len(parts) == 3 else "0.0.0.0"
            result.append((address, int(parts[-2])))
    return result
