"""The registry's version numbers and current-model pointer in the database (SQLite and a real
PostgreSQL): numbers reserved once across racing hosts, promotion by compare-and-swap, the
``current.json`` mirror rewritten after each change and repaired when it is stale, and the
runner's settling of a candidate the gate passed."""

from __future__ import annotations

import json
import threading

import pytest

from imgclf.loop import registering
from imgclf.loop.gate import GateDecision
from imgclf.loop.outcome import Outcome
from imgclf.model import registry
from imgclf.store import Store, migrations
from imgclf.store.jobstates import JobState
from imgclf.store.pointer import ANY

ENGINES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def db(database_url) -> Store:
    migrations.upgrade(database_url)
    return Store(database_url)


def _versions(models_dir, count: int, tmp_path) -> list[str]:
    model_file = tmp_path / "model.keras"
    model_file.write_bytes(b"weights")
    return [registry.register(models_dir, model_file, {"n": n}) for n in range(count)]


@ENGINES
def test_hosts_racing_for_version_numbers_each_get_their_own(db, database_url, tmp_path):
    models_dir = tmp_path / "models"
    _versions(models_dir, 2, tmp_path)  # registered before the database numbered anything
    hosts = [Store(database_url) for _ in range(4)]  # four engines: four "hosts"
    got, start = [], threading.Barrier(len(hosts))

    def reserve(host: Store) -> None:
        start.wait()
        got.extend(host.reserve_version(models_dir) for _ in range(5))

    threads = [threading.Thread(target=reserve, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = [registry.version_name(n) for n in range(3, 23)]
    assert sorted(got) == expected  # 20 reservations, 20 numbers, none of v0001/v0002 again
    # a registration without the database skips the reserved numbers too
    model_file = tmp_path / "model.keras"
    assert registry.register(models_dir, model_file, {}) == "v0023"
    # a run registers into its reserved number once; its marker goes
    assert registry.register(models_dir, model_file, {}, version="v0003") == "v0003"
    assert not (models_dir / f"{registry.RESERVED_PREFIX}v0003").exists()
    with pytest.raises(registry.RegistryError, match="v0003"):
        registry.register(models_dir, model_file, {}, version="v0003")


@ENGINES
def test_promotion_is_a_compare_and_swap_and_the_mirror_follows(db, database_url, tmp_path):
    models_dir = tmp_path / "models"
    v1, v2, v3 = _versions(models_dir, 3, tmp_path)
    registry.promote(models_dir, v1)  # a registry from before the table: adopted on first use
    assert db.model_pointer(models_dir)["version"] == v1
    pointer = db.promote_version(models_dir, v2, expected=v1)
    assert pointer["version"] == v2 and pointer["history"] == [v1]
    mirror = json.loads((models_dir / registry.POINTER_FILE).read_text())
    assert mirror["version"] == v2 and mirror["generation"] == pointer["generation"]
    # a candidate compared with v1 is not made current over v2, and nothing changes
    with pytest.raises(registry.PointerMoved, match=f"from {v1} to {v2}"):
        db.promote_version(models_dir, v3, expected=v1)
    assert registry.current_version(models_dir) == v2
    assert Store(database_url).model_pointer(models_dir)["version"] == v2
    with pytest.raises(registry.RegistryError, match="v0042"):
        db.promote_version(models_dir, "v0042", expected=ANY)
    assert db.rollback_version(models_dir)["version"] == v1
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        db.rollback_version(models_dir)
    # a process died between the commit and the mirror: the next read rewrites the mirror
    registry.write_pointer(models_dir, {"version": v3, "history": [], "changed_at": "then"})
    assert db.model_pointer(models_dir)["version"] == v1
    assert registry.current_version(models_dir) == v1


@ENGINES
def test_of_two_candidates_compared_with_the_same_model_one_is_promoted(
    db, database_url, tmp_path
):
    models_dir = tmp_path / "models"
    v1, *candidates = _versions(models_dir, 9, tmp_path)
    db.promote_version(models_dir, v1)
    hosts = [Store(database_url) for _ in candidates]
    won, moved, start = [], [], threading.Barrier(len(hosts))

    def promote(host: Store, version: str) -> None:
        start.wait()
        try:
            host.promote_version(models_dir, version, expected=v1)
            won.append(version)
        except registry.PointerMoved:
            moved.append(version)

    threads = [
        threading.Thread(target=promote, args=pair) for pair in zip(hosts, candidates, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(moved) == len(candidates) - 1
    assert registry.current_version(models_dir) == won[0]
    assert db.model_pointer(models_dir)["history"] == [v1]


@ENGINES
def test_a_registering_run_settles_a_pending_candidate_or_rejects_it_saying_why(
    db, database_url, tmp_path
):
    models_dir = tmp_path / "models"
    v1, v2, v3 = _versions(models_dir, 3, tmp_path)
    db.promote_version(models_dir, v1)
    passed = GateDecision(True, "f1_macro", 1.0, 1.0, 0.0, "not worse", 5, 0.05, 0.5, 0.05)

    def pending(version: str, policy: str = "if-not-worse") -> Outcome:
        return Outcome(version, True, passed, v1, compared_with=v1, policy=policy, pending=True)

    settled = registering.settle(pending(v2), models_dir, db)
    assert settled.promoted and not settled.pending and settled.state == JobState.PROMOTED
    assert registry.current_version(models_dir) == v2
    late = registering.settle(pending(v3), models_dir, db)  # also compared with v1
    assert late.state == JobState.REJECTED and not late.decision.promote
    assert f"changed from {v1} to {v2}" in late.decision.reason
    assert late.summary()["reason"] == late.decision.reason
    assert registry.current_version(models_dir) == v2
    forced = registering.settle(pending(v3, policy="always"), models_dir, db)
    assert forced.promoted and registry.current_version(models_dir) == v3
    assert registering.settle(late, models_dir, db) is late  # nothing pending: untouched
