"""bench/seed.py: the one seeded history both page benchmarks measure (a small world)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import cast

import pytest
from sqlalchemy import Table, text

from bench import seed
from bench.pg import columns_for, database_url, drop_database
from ci.db import make_engine
from ci.models import TestResult

BUILDS, RESULTS = 200, 60_000


@pytest.fixture(scope="module")
def seeded(pg_server: str) -> Iterator[str]:
    name = f"hypervci_bench_seed_{uuid.uuid4().hex[:8]}"
    engine = seed.prepare(name, BUILDS, RESULTS)
    engine.dispose()
    try:
        yield name
    finally:
        drop_database(name)


def test_result_counts_add_up_to_the_scale_with_full_runs_for_the_newest() -> None:
    world = seed.World(BUILDS, RESULTS)
    rng = random.Random(12)
    states = {b: world.build_state(b, rng) for b in range(1, BUILDS + 1)}
    counts = seed.result_counts(world, states)
    assert sum(counts.values()) == RESULTS
    assert set(counts) == {b for b, s in states.items() if s in ("succeeded", "failed")}
    newest = sorted(counts)[-seed.FULL_RUNS:]
    assert all(counts[b] == seed.TEST_IDS for b in newest)


def test_a_build_and_its_recheck_run_the_same_tests() -> None:
    # Builds 2n+1 and 2n+2: one patchset, one job, the second a recheck.
    world = seed.World(BUILDS, RESULTS)
    assert world.patchset_of(5) == world.patchset_of(6)
    assert seed.World.first_test(5) == seed.World.first_test(6) != seed.World.first_test(7)


def test_columns_are_checked_against_the_models_table() -> None:
    table = cast(Table, TestResult.__table__)
    with pytest.raises(ValueError, match="missing NOT NULL columns \\['test_id'\\]"):
        columns_for(table, ("build_id", "status", "details"))
    with pytest.raises(ValueError, match="unknown columns \\['nope'\\]"):
        columns_for(table, ("build_id", "test_id", "status", "nope"))


@pytest.mark.postgres
def test_the_seeded_history_has_its_scale_its_indexes_and_realistic_flips(seeded: str) -> None:
    engine = make_engine(database_url(seeded))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM builds")).scalar_one() == BUILDS
        assert conn.execute(text("SELECT count(*) FROM test_results")).scalar_one() == RESULTS
        persistence, = conn.execute(text(
            "SELECT relpersistence FROM pg_class WHERE relname = 'test_results'")).one()
        assert persistence == "p"  # logged again after the load
        indexes = set(conn.execute(text(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'test_results'")).scalars())
        assert {"ix_test_results_test_id_build_id", "ix_test_results_failing",
                "ix_test_results_build_id"} <= indexes
        keys = conn.execute(text("SELECT count(*) FROM pg_constraint WHERE conrelid = "
                                 "'test_results'::regclass AND contype = 'f'")).scalar_one()
        assert keys == 1
        flips: dict[str, int] = dict(conn.execute(text(
            "SELECT kind, count(*) FROM test_flips GROUP BY kind")).all())
        # A failed build's failures pass in its recheck; flaky results are re-run flips.
        assert flips.get("recheck", 0) > 0 and flips.get("rerun", 0) > 0
        names = set(conn.execute(text("SELECT DISTINCT test_id FROM test_results")).scalars())
        assert names == set(seed.test_names())  # the SQL makes the names Python does
        # A build's results are stored together (as a CI writes them), so a page reading
        # a window of builds reads few pages of the table.
        correlation = conn.execute(text(
            "SELECT correlation FROM pg_stats WHERE tablename = 'test_results' "
            "AND attname = 'build_id'")).scalar_one()
        assert correlation > 0.9
        hostile = conn.execute(text("SELECT count(*) FROM test_results WHERE details LIKE "
                                    "'%实例%'")).scalar_one()
        assert hostile > 0
        nodes = set(conn.execute(text("SELECT DISTINCT node FROM build_steps WHERE name = "
                                      "'tempest'")).scalars())
        assert nodes <= set(conn.execute(text("SELECT name FROM nodes WHERE label = 'hyperv'")
                                         ).scalars())
    engine.dispose()


@pytest.mark.postgres
def test_a_database_holding_the_scale_is_reused_not_reseeded(seeded: str) -> None:
    engine = seed.prepare(seeded, BUILDS, RESULTS)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO listener_state (key, value) VALUES ('kept', 'yes')"))
    engine.dispose()
    engine = seed.prepare(seeded, BUILDS, RESULTS)  # as bench/history.py after the dashboard
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT value FROM listener_state WHERE key = 'kept'")).scalar()
    engine.dispose()
    assert kept == "yes"
