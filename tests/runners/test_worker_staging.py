"""The worker's private staging directory: reused after a build that staged
nothing, fresh after one that did, and always empty when a job gets it."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.models import Build
from runners.base import BuildContext, JobResult, Outcome, Runner
from runners.worker import Worker
from tests.runners.test_worker import make_config


class StagingRunner(Runner[None]):
    """Notes the staging directory it got and what was in it; writes `files` there."""

    def __init__(self, seen: list[tuple[Path, list[str]]], files: dict[str, str]) -> None:
        self.seen = seen
        self.files = files

    def prepare(self, ctx: BuildContext) -> None:
        return None

    def run(self, ctx: BuildContext, prepared: None) -> JobResult:
        self.seen.append((ctx.log_dir, sorted(p.name for p in ctx.log_dir.iterdir())))
        assert stat.S_IMODE(ctx.log_dir.stat().st_mode) == 0o700
        for name, text in self.files.items():
            (ctx.log_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (ctx.log_dir / name).write_text(text, encoding="utf-8")
        return JobResult(Outcome.SUCCEEDED, "done")


def enqueue_change(sessions: sessionmaker[Session], number: int) -> int:
    with sessions() as session, session.begin():
        patchset = queue.upsert_patchset(session, queue.ChangeInfo(
            number=number, project="openstack/nova", branch="master", patchset=1))
        build = queue.enqueue(session, patchset, "unit", "patchset-created")
        assert build is not None
        return build.id


def test_staging_is_reused_only_when_left_empty(sqlite_sessions: sessionmaker[Session],
                                                tmp_path: Path) -> None:
    config = make_config(tmp_path, ["true"])
    seen: list[tuple[Path, list[str]]] = []
    plans = iter([{}, {"collected/console.txt": "hello"}, {}, {}])
    worker = Worker(config, sqlite_sessions, name="w1",
                    runner_factory=lambda _c, _j: StagingRunner(seen, next(plans)))
    ids = [enqueue_change(sqlite_sessions, 10001 + i) for i in range(4)]
    for _ in ids:
        assert worker.run_once()
    dirs = [d for d, _ in seen]
    assert all(listing == [] for _, listing in seen)  # every job got an empty directory
    assert dirs[1] == dirs[0]  # nothing staged by the first: reused
    assert dirs[2] != dirs[1] and not dirs[1].exists()  # the second's was published, removed
    assert dirs[3] == dirs[2]
    with sqlite_sessions() as session:
        build = session.get(Build, ids[1])
        assert build is not None and build.log_path is not None
        published = Path(build.log_path) / "collected" / "console.txt"
        assert published.read_text(encoding="utf-8") == "hello"
    assert not (dirs[1] / "collected").exists()


def test_a_stopped_worker_removes_its_spare_staging(sqlite_sessions: sessionmaker[Session],
                                                    tmp_path: Path) -> None:
    config = make_config(tmp_path, ["true"])
    seen: list[tuple[Path, list[str]]] = []
    stop = threading.Event()

    def factory(_c: object, _j: str) -> Runner[None]:
        stop.set()  # the loop ends after this build
        return StagingRunner(seen, {})

    worker = Worker(config, sqlite_sessions, name="w1", runner_factory=factory)
    enqueue_change(sqlite_sessions, 10001)
    worker.run(stop)
    assert len(seen) == 1 and not seen[0][0].exists()
