"""The container stack's description and its runner, without an engine: compose.yaml and
compose.offline.yaml in step, secrets only as files, what `make stack-up` would run, the
secret files it writes, and the settings that read them (``NAME_FILE``)."""

from __future__ import annotations

import re
import socket
import stat

import pytest
import sqlalchemy as sa

from devkit.stack import __main__ as stack
from devkit.stack import compose
from devkit.stack.engine import StackError, find
from imgclf.config import PROJECT_ROOT, ConfigError, get_service_settings, get_settings
from imgclf.config.readers import SECRET_NAMES

ONLINE = [PROJECT_ROOT / "compose.yaml"]
OFFLINE = [*ONLINE, PROJECT_ROOT / "compose.offline.yaml"]
OWN = ("api", "worker", "dashboard", "migrate")  # the services that run the imgclf image


def document(files=ONLINE, **environment):
    return compose.load(files, {"IMGCLF_VERSION": "0.1.0", **environment})


def test_the_runner_understands_every_key_of_both_files():
    for files in (ONLINE, OFFLINE):
        assert set(document(files)["services"]) >= {"db", "api", "worker", "lb", "dashboard"}


@pytest.mark.parametrize(
    ("service", "refused"),
    [
        ("privileged: true", "'privileged'"),
        ("deploy: {resources: {limits: {cpus: '1'}}}", "deploy.resources"),
        ("healthcheck: {test: [CMD, 'true'], start_interval: 1s}", "healthcheck.start_interval"),
        ("environment: [A=1]", "environment as a list"),
        ("ports: [{target: 80, published: 8080}]", "ports in long form"),
    ],
)
def test_what_the_runner_would_skip_is_refused_by_name(tmp_path, service, refused):
    path = tmp_path / "compose.yaml"
    path.write_text(f"services:\n  api:\n    image: x\n    {service}\n")
    with pytest.raises(compose.UnsupportedKey, match=re.escape(refused)):
        compose.load([path], {})


def test_the_image_is_rebuilt_when_its_sources_change(monkeypatch, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(stack, "PROJECT_ROOT", tmp_path)
    before = stack.source_digest()
    assert stack.source_digest() == before
    (tmp_path / "src" / "a.py").write_text("x = 2\n")
    assert stack.source_digest() != before


def test_offline_override_stands_in_for_every_registry_image():
    online, offline = document(ONLINE)["services"], document(OFFLINE)["services"]
    assert set(offline) == set(online)  # the override adds no service and loses none
    for name, service in online.items():
        if name in OWN:
            assert offline[name]["build"]["args"]["PYTHON_IMAGE"] == "imgclf-base:trixie"
            continue
        replaced = offline[name]["image"] != service["image"]
        disabled = bool(offline[name].get("profiles"))
        assert replaced or disabled, f"{name}: offline it would pull {service['image']}"
        if replaced:  # a local name, built from Debian's packages in this repository
            assert "/" not in offline[name]["image"].split(":")[0], offline[name]["image"]
            context = PROJECT_ROOT / offline[name]["build"]["context"]
            assert (context / offline[name]["build"]["dockerfile"]).is_file(), name


def test_secrets_reach_containers_as_files_only():
    doc = document()
    declared = doc["secrets"]
    assert set(declared) == set(stack.SECRETS.values())
    for secret in declared.values():
        assert secret["file"].startswith("./.secrets/")
    used = set()
    for name, service in doc["services"].items():
        mounted = set(service.get("secrets", []))
        used |= mounted
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                assert secret in mounted, f"{name}: {key} names a secret it does not mount"
            elif key == "DATABASE_URL":  # the place, not the password (DATABASE_PASSWORD_FILE)
                assert sa.make_url(value).password is None, name
            else:
                assert not SECRET_NAMES.search(key), f"{name}: {key} is a secret in a variable"
    assert used == set(declared)
    text = (PROJECT_ROOT / "compose.yaml").read_text()
    for variable in stack.SECRETS:  # nothing interpolates a secret into the file
        assert f"${{{variable}" not in text, variable


def test_the_dashboard_gets_no_database_password():
    dashboard = document()["services"]["dashboard"]
    assert "postgres_password" not in dashboard["secrets"]
    assert "DATABASE_URL" not in dashboard["environment"]


def test_the_stack_runs_hardened_replicas_in_dependency_order():
    doc = document(REPLICAS="3", LB_PORT="18080")
    plan = compose.containers(doc, "t", PROJECT_ROOT, set())
    names = [c.name for c in plan]
    assert [c.name for c in plan if c.service == "api"] == ["t-api-1", "t-api-2", "t-api-3"]
    assert names.index("t-db-1") < names.index("t-migrate-1") < names.index("t-api-1")
    assert names.index("t-api-3") < names.index("t-lb-1")
    offline = compose.containers(document(OFFLINE), "t", PROJECT_ROOT, set())
    assert "grafana" in {c.service for c in plan} - {c.service for c in offline}
    for container in plan:
        if container.service in OWN:
            arguments = container.arguments
            for flag in ("--read-only", "--tmpfs=/tmp", "--cap-drop=ALL"):
                assert flag in arguments, (container.name, flag)
            assert "--security-opt=no-new-privileges:true" in arguments
            assert "--network-alias" in arguments
    migrate = next(c for c in plan if c.service == "migrate")
    assert migrate.one_shot and "--restart=no" in migrate.arguments
    api = next(c for c in plan if c.service == "api")
    token = PROJECT_ROOT / ".secrets" / "imgclf_admin_token"
    assert f"--volume={token}:/run/secrets/imgclf_admin_token:ro" in api.arguments
    assert ("0.0.0.0", 18080) in compose.published_ports(doc, set())
    assert all(
        address == "127.0.0.1"
        for address, port in compose.published_ports(doc, set())
        if port != 18080
    )


def test_interpolation_as_compose_does_it():
    environment = {"SET": "x", "EMPTY": ""}
    assert compose.interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$x", environment) == (
        "x d  d $x"
    )
    with pytest.raises(compose.MissingVariable, match="NEEDED: say why"):
        compose.interpolate("${NEEDED:?say why}", environment)
    assert compose.seconds("1m30s") == 90 and compose.seconds("10m") == 600


def test_a_dependency_cycle_is_refused():
    services = {"a": {"depends_on": ["b"]}, "b": {"depends_on": {"a": {"condition": "x"}}}}
    with pytest.raises(ValueError, match="cycle"):
        compose.start_order(services)


def test_secrets_are_written_once_private_and_readable_by_containers(tmp_path):
    env_file, folder = tmp_path / ".env", tmp_path / ".secrets"
    env_file.write_text("AUTO_RETRAIN=1\n")
    first = stack.ensure_secrets(env_file, folder)
    assert stack.ensure_secrets(env_file, folder) == first  # stable: not regenerated
    text = env_file.read_text()  # make run loads .env: only the admin token, shared with it
    assert "AUTO_RETRAIN=1" in text and f"IMGCLF_ADMIN_TOKEN={first['IMGCLF_ADMIN_TOKEN']}" in text
    assert not any(variable in text for variable in stack.SECRETS if "TOKEN" not in variable)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for variable, name in stack.SECRETS.items():
        assert (folder / name).read_text() == first[variable] and len(first[variable]) >= 32
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644
    assert len(set(first.values())) == len(first)


def test_settings_read_secrets_from_files(tmp_path, monkeypatch):
    token, password = tmp_path / "token", tmp_path / "password"
    token.write_text("s3cret\n")
    password.write_text("p@ss/word")
    monkeypatch.delenv("IMGCLF_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("IMGCLF_ADMIN_TOKEN_FILE", str(token))
    assert get_service_settings().admin_token == "s3cret"
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://imgclf@db:5432/imgclf")
    monkeypatch.setenv("DATABASE_PASSWORD_FILE", str(password))
    url = sa.make_url(get_settings().database_url)
    assert url.password == "p@ss/word" and url.host == "db" and url.username == "imgclf"
    token.write_text("")
    with pytest.raises(ConfigError, match="IMGCLF_ADMIN_TOKEN_FILE=.*empty"):
        get_service_settings()
    monkeypatch.setenv("IMGCLF_ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="IMGCLF_ADMIN_TOKEN_FILE=.*cannot read"):
        get_service_settings()
    monkeypatch.setenv("IMGCLF_ADMIN_TOKEN", "from the variable")  # a variable wins
    assert get_service_settings().admin_token == "from the variable"


def test_engine_errors_say_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(StackError, match="expected docker or podman"):
        find("containerd", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=re.escape("apt-get install podman")):
        find(None, tmp_path)


def test_a_port_in_use_is_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match=f"port {port} .*in use"):
            stack.check_ports([("127.0.0.1", port)])


def test_trimming_the_base_removes_links_to_folders_as_links(tmp_path):
    from devkit.stack.engine import _trim

    doc = tmp_path / "usr" / "share" / "doc"
    (doc / "gcc-14-base").mkdir(parents=True)
    (doc / "gcc-14-base" / "copyright").write_text("x")
    (doc / "libgcc-s1").symlink_to("gcc-14-base")  # trixie has such links, sorted either way
    (tmp_path / "usr" / "share" / "locale").mkdir()
    (tmp_path / "usr" / "share" / "locale" / "locale.alias").write_text("kept")
    _trim(tmp_path)
    assert list(doc.iterdir()) == []
    assert (tmp_path / "usr" / "share" / "locale" / "locale.alias").exists()
