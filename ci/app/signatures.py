"""`hyperv-ci signatures test FILE BUILD_ID`: try a signature file against a past build."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import select

from ci.app.common import Ctx
from ci.app.connect import sessions_of
from ci.baseline import FAILING
from ci.config import ConfigError
from ci.models import Build, TestResult
from ci.signatures import FailedTest, load_signatures, match_failures


@click.group()
def signatures() -> None:
    """Known-failure signatures (docs/verdict.md)."""


@signatures.command("test")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("build_id", type=int)
@click.pass_obj
def signatures_test(obj: Ctx, file: Path, build_id: int) -> None:
    """Print what FILE's signatures match in build BUILD_ID (its failed tests, its logs).

    Exits 0 when something matched, 1 when nothing did, 2 on a bad file or build.
    """
    try:
        rules = load_signatures(file)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    with sessions_of(obj.config)() as session:
        build = session.get(Build, build_id)
        if build is None:
            click.echo(f"error: no build {build_id}", err=True)
            raise SystemExit(2)
        failed = [FailedTest(t.test_id, t.details) for t in session.scalars(
            select(TestResult).where(TestResult.build_id == build_id,
                                     TestResult.status.in_(FAILING)).order_by(TestResult.id))]
        log_dir = Path(build.log_path) if build.log_path else None
    matches = match_failures(rules, failed, log_dir, obj.config.verdict.scan_bytes)
    click.echo(f"build {build_id}: {len(failed)} failed tests, {len(rules)} signatures, "
               f"{len(matches)} matches")
    for match in matches:
        where = f" in {match.file}" if match.file else ""
        click.echo(f"{match.signature_id} {match.bug}: {match.test_id}{where}")
        if match.excerpt:
            click.echo(f"    {match.excerpt}")
    if not matches:
        raise SystemExit(1)
