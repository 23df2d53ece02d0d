"""The container engine (docker or podman) through its command line: find it, build images
(online, or air-gapped from a Debian base made by debootstrap), ask about containers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ENGINES = ("docker", "podman")
BASE_IMAGE = "imgclf-base:trixie"
BASE_SUITE = "trixie"  # Python 3.13: bookworm's 3.11.2 is older than the lock allows (3.11.5)
DEBIAN_MIRROR = "http://deb.debian.org/debian"
#: What a minimal Debian carries that no container needs: package caches, lists, manuals.
TRIM = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)


class StackError(RuntimeError):
    """What went wrong, said for the person who typed ``make``."""


@dataclass
class Engine:
    name: str  # docker or podman
    environment: dict[str, str]

    def command(self, *arguments: str, check: bool = True, capture: bool = True, timeout=None):
        result = subprocess.run(
            [self.name, *arguments],
            env=self.environment,
            text=True,
            timeout=timeout,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
        if check and result.returncode != 0:
            detail = (result.stderr or "").strip().splitlines()[-3:] if capture else []
            raise StackError(f"{self.name} {arguments[0]} failed: {' / '.join(detail)}")
        return result

    def image_exists(self, image: str) -> bool:
        return self.command("image", "inspect", image, check=False).returncode == 0

    def inspect(self, name: str) -> dict | None:
        result = self.command("container", "inspect", name, check=False)
        if result.returncode != 0:
            return None
        answer = json.loads(result.stdout)
        return answer[0] if answer else None

    def healthy(self, name: str) -> bool:
        """Runs the container's health check now (podman without systemd runs none by itself);
        a container without one is healthy while it runs."""
        details = self.inspect(name) or {}
        check = (details.get("Config") or {}).get("Healthcheck") or {}
        if not check.get("Test") or check["Test"][0] == "NONE":
            return bool(details.get("State", {}).get("Running"))
        if self.name == "podman":
            return self.command("healthcheck", "run", name, check=False).returncode == 0
        return (details.get("State", {}).get("Health") or {}).get("Status") == "healthy"

    def containers(self, project: str, all_states: bool = True) -> list[str]:
        arguments = ["ps", "--filter", f"label=imgclf.stack={project}", "--format", "{{.Names}}"]
        output = self.command(*arguments, *(["--all"] if all_states else [])).stdout
        return [line.strip() for line in output.splitlines() if line.strip()]

    def logs(self, name: str, lines: int = 30) -> str:
        result = self.command("logs", "--tail", str(lines), name, check=False)
        return (result.stdout or "") + (result.stderr or "")

    def build(self, tag, context: Path, dockerfile: Path, build_args: dict, labels: dict, state):
        """Build ``tag``. pip's CA (``PIP_CERT``) and index (``PIP_INDEX_URL``, which may hold
        credentials) go in as build secrets: never an argument, a label or a layer."""
        arguments = ["build", "--network", "host", "-t", tag, "-f", str(dockerfile)]
        if self.name == "podman":
            arguments += ["--format", "docker"]  # keeps HEALTHCHECK (OCI images drop it)
        for key, value in build_args.items():
            arguments += ["--build-arg", f"{key}={value}"]
        for key, value in labels.items():
            arguments += ["--label", f"{key}={value}"]
        for name, path in build_secrets(state).items():
            arguments += ["--secret", f"id={name},src={path}"]
        self.command(*arguments, str(context), capture=False)


def build_secrets(state: Path) -> dict[str, Path]:
    """``pip_cert`` (``PIP_CERT``'s file) and ``pip_index_url`` (``PIP_INDEX_URL``), each an
    empty file in ``state`` (the owner's only) when unset: the Dockerfile skips empty ones."""
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    files = {}
    certificate = os.environ.get("PIP_CERT")
    if certificate and Path(certificate).is_file():
        files["pip_cert"] = Path(certificate)
    else:
        files["pip_cert"] = state / "pip_cert"
        files["pip_cert"].write_text("")
    files["pip_index_url"] = state / "pip_index_url"
    files["pip_index_url"].write_text(os.environ.get("PIP_INDEX_URL", ""))
    files["pip_index_url"].chmod(0o600)
    return files


def find(requested: str | None, state_dir: Path) -> Engine:
    """The engine to use: ``CONTAINER_ENGINE``, else the first of docker and podman that works.

    Raises:
        StackError: none is installed or answers, or an unknown one was asked for.
    """
    if requested and requested not in ENGINES:
        raise StackError(f"CONTAINER_ENGINE={requested!r}: expected docker or podman")
    tried = []
    for name in [requested] if requested else ENGINES:
        if shutil.which(name) is None:
            tried.append(f"{name}: not installed")
            continue
        environment = dict(os.environ)
        if name == "podman" and "CONTAINERS_CONF" not in environment:
            environment["CONTAINERS_CONF"] = str(_podman_conf(state_dir))
        info = subprocess.run([name, "info"], env=environment, capture_output=True, text=True)
        if info.returncode == 0:
            return Engine(name, environment)
        reason = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        tried.append(f"{name}: {reason}")
    raise StackError(
        "no container engine works (" + "; ".join(tried) + "). Install one "
        "(apt-get install podman) or set CONTAINER_ENGINE=docker|podman"
    )


def _podman_conf(state_dir: Path) -> Path:
    """containers.conf for a root podman in a sandbox: open-file and process limits it may set,
    and runc where cgroups are mounted in hybrid mode (crun refuses to start there)."""
    lines = ["[containers]", 'default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]']
    hybrid = Path("/sys/fs/cgroup/unified").is_dir() and Path("/sys/fs/cgroup/memory").is_dir()
    if hybrid:
        if shutil.which("runc") is None:
            raise StackError("cgroups in hybrid mode: podman needs runc (apt-get install runc)")
        lines += ["[engine]", 'runtime = "runc"']
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "containers.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def _trim(root: Path) -> None:
    """Empty the folders of ``TRIM`` (a link to a folder is removed as a link, not followed)."""
    for part in TRIM:
        for child in (root / part).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            elif child.name != "locale.alias":
                child.unlink()


def make_base(engine: Engine, mirror: str = DEBIAN_MIRROR) -> None:
    """``imgclf-base:trixie`` from the Debian mirror: debootstrap (or mmdebstrap) a minimal
    Debian with Python, trimmed, imported into the engine. No image registry is asked."""
    if engine.image_exists(BASE_IMAGE):
        return
    tool = shutil.which("mmdebstrap") or shutil.which("debootstrap")
    if tool is None:
        raise StackError("OFFLINE=1 makes its base with debootstrap: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise StackError("OFFLINE=1: debootstrap needs root (run make as root, or sudo)")
    include = "--include=python3,python3-venv,ca-certificates"
    with tempfile.TemporaryDirectory(prefix="imgclf-base-", dir="/var/tmp") as folder:
        root = Path(folder) / "rootfs"
        print(f"making {BASE_IMAGE} with {Path(tool).name} from {mirror} (about a minute)")
        done = subprocess.run(
            [tool, "--variant=minbase", include, BASE_SUITE, str(root), mirror],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise StackError(f"{Path(tool).name} failed: {done.stderr.strip()[-400:]}")
        _trim(root)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [engine.name, "import", "-", BASE_IMAGE],
            stdin=tar.stdout,
            env=engine.environment,
            capture_output=True,
            text=True,
        )
        if tar.wait() != 0 or imported.returncode != 0:
            raise StackError(f"{engine.name} import failed: {imported.stderr.strip()[-400:]}")
