"""Migration 0012: a history recorded before test_flips existed gets its flips.

The schema is built to 0011, the history seeded as it was then (results only),
then upgraded: the /flaky page must count what the rule finds in that history.
"""

from __future__ import annotations

from datetime import timedelta

from alembic import command
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ci.db import alembic_config, make_engine, make_sessionmaker, upgrade
from ci.models import TestFlip
from ci.test_history import flaky_tests
from tests.history_seed import RECHECK_FLAKY, RERUN_FLAKY, seed_history


def test_upgrading_to_0012_backfills_the_flips_of_the_history(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0011")
        sessions = make_sessionmaker(engine)
        world = seed_history(sessions, flips=False)  # results only, as before 0012
        upgrade(engine)
        ids = world.builds
        with Session(engine) as s:
            assert s.scalar(select(func.count()).select_from(TestFlip)) == 3
            found = {f.test_id: f for f in flaky_tests(s, world.now - timedelta(days=30))}
            assert {t: (f.rerun_flips, f.recheck_flips) for t, f in found.items()} == {
                RECHECK_FLAKY: (0, 2), RERUN_FLAKY: (1, 0)}
            assert found[RECHECK_FLAKY].builds == (ids["b2"], ids["b"], ids["a"])
    finally:
        engine.dispose()
