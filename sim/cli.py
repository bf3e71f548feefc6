"""`hyperv-ci-sim ...`: run the simulated Gerrit, or drive a running one from another shell.

The simulators' own command, apart from the product's `hyperv-ci` (which
never imports `sim/`; `hyperv-ci demo` starts the simulators itself).

The running sim advertises itself in STATE_DIR/sim-gerrit.json (host, port,
the admin key and known_hosts); the commands here read it and send `sim-*`
control commands over real SSH as the admin user. STATE_DIR is --state-dir,
else $HYPERV_CI_STATE_DIR, else `.demo`.
"""

from __future__ import annotations

import json
import re
import signal
import threading
from pathlib import Path
from typing import Any

import click

from ci.config import GerritConfig
from ci.gerrit import GerritClient
from ci.gerrit_errors import GerritError
from sim.gerrit import ADVERT_FILE, SimGerrit
from sim.gerrit_labels import Range, parse_grant

_state_dir = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), envvar="HYPERV_CI_STATE_DIR",
    default=Path(".demo"), show_default=True, help="Where the simulators keep their state.")


@click.group("hyperv-ci-sim")
def sim() -> None:
    """The simulated Gerrit: serve it, push changes, comment, merge, read reviews."""


def _call(state_dir: Path, command: str, payload: dict[str, Any] | None = None,
          stdin: bytes | None = None) -> Any:
    """Send one control command to the running sim; its JSON answer."""
    advert_file = state_dir / ADVERT_FILE
    try:
        advert = json.loads(advert_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise click.ClickException(
            f"no simulated Gerrit is running ({advert_file} not found); start one with "
            "`hyperv-ci-sim serve` or `hyperv-ci demo`, or pass --state-dir") from None
    config = GerritConfig(host=advert["host"], port=advert["port"],
                          username=advert["admin_user"], key_file=Path(advert["admin_key"]),
                          known_hosts=Path(advert["known_hosts"]), keepalive=0)
    client = GerritClient(config, timeout=10)
    try:
        out = client.run([command, json.dumps(payload or {}, ensure_ascii=False)], stdin=stdin)
    except GerritError as exc:
        if exc.exit_status is None:
            raise click.ClickException(
                f"no simulated Gerrit answers at {advert['host']}:{advert['port']} "
                f"(from {advert_file}): {exc}") from None
        raise click.ClickException(exc.stderr.strip().removeprefix("fatal: ")) from None
    finally:
        client.close()
    return json.loads(out)


def _change_ps(text: str) -> tuple[int, int]:
    if not re.fullmatch(r"[1-9][0-9]*,[1-9][0-9]*", text):
        raise click.BadParameter(f"{text!r} is not CHANGE,PATCHSET (e.g. 10001,2)")
    change, ps = text.split(",")
    return int(change), int(ps)


@sim.command()
@_state_dir
@click.option("--port", type=int, default=29418, show_default=True, help="0 picks a free port.")
@click.option("--user", "users", multiple=True, metavar="NAME=PUBKEY_FILE",
              help="Authorize an SSH user with an OpenSSH public key file (repeatable).")
@click.option("--grant", "grant_specs", multiple=True,
              metavar="ACCOUNT:LABEL=MIN..MAX[,LABEL=MIN..MAX]",
              help="The labels ACCOUNT may vote, replacing the default Verified=-1..+1 "
              "(repeatable; 'ACCOUNT:' grants none).")
@click.option("--strict-labels/--no-strict-labels", default=None,
              help="Gerrit's change.strictLabels: refuse votes on unknown labels or values "
              "instead of dropping them (default: as last run, else off).")
def serve(state_dir: Path, port: int, users: tuple[str, ...], grant_specs: tuple[str, ...],
          strict_labels: bool | None) -> None:
    """Run the simulated Gerrit alone until interrupted."""
    grants: dict[str, dict[str, Range]] = {}
    for spec in grant_specs:
        try:
            account, labels = parse_grant(spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--grant") from None
        grants[account] = labels
    authorized: dict[str, str] = {}
    for item in users:
        name, eq, path = item.partition("=")
        if not eq or not name:
            raise click.BadParameter(f"{item!r} is not NAME=PUBKEY_FILE", param_hint="--user")
        try:
            authorized[name] = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise click.BadParameter(f"{path}: {exc.strerror}", param_hint="--user") from None
    server = SimGerrit(state_dir, port=port, users=authorized, grants=grants,
                       strict_labels=strict_labels)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    try:
        server.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on port {port}: {exc.strerror}") from None
    click.echo(f"simulated Gerrit on 127.0.0.1:{server.port}")
    click.echo(f"known_hosts: {server.known_hosts_file}")
    click.echo(f"users: {', '.join(['admin', *authorized])}; Ctrl-C stops it")
    try:
        done.wait()
    finally:
        server.stop()


@sim.command()
@_state_dir
@click.option("--project", required=True)
@click.option("--branch", default="master", show_default=True)
@click.option("--file", "files", multiple=True, required=True, help="A path the change touches.")
@click.option("--subject", required=True)
@click.option("--owner", default="developer", show_default=True)
@click.option("--change", type=int, default=None, help="Upload a new patch set of this change.")
def push(state_dir: Path, project: str, branch: str, files: tuple[str, ...], subject: str,
         owner: str, change: int | None) -> None:
    """Upload a change (or a new patch set); prints CHANGE,PATCHSET and the ref."""
    result = _call(state_dir, "sim-push", {"project": project, "branch": branch,
                                           "files": list(files), "subject": subject,
                                           "owner": owner, "change": change})
    click.echo(f"{result['change']},{result['patchset']} {result['ref']}")


@sim.command()
@_state_dir
@click.argument("target")
@click.argument("text")
@click.option("--author", default="reviewer", show_default=True)
def comment(state_dir: Path, target: str, text: str, author: str) -> None:
    """Comment TEXT on CHANGE,PATCHSET (e.g. "recheck")."""
    change, ps = _change_ps(target)
    _call(state_dir, "sim-comment", {"change": change, "patchset": ps, "text": text,
                                     "author": author})


@sim.command()
@_state_dir
@click.argument("change", type=int)
def abandon(state_dir: Path, change: int) -> None:
    """Abandon CHANGE."""
    _call(state_dir, "sim-abandon", {"change": change})


@sim.command()
@_state_dir
@click.argument("change", type=int)
def merge(state_dir: Path, change: int) -> None:
    """Merge CHANGE into its branch; prints the new branch tip."""
    click.echo(_call(state_dir, "sim-merge", {"change": change})["newRev"])


def _signed(value: int) -> str:
    return f"{value:+d}" if value else "0"


@sim.command()
@_state_dir
@click.argument("spec", metavar="ACCOUNT:LABEL=MIN..MAX[,LABEL=MIN..MAX]")
def grant(state_dir: Path, spec: str) -> None:
    """Set the labels ACCOUNT may vote on the running sim (e.g. hyperv-ci:Verified=0..+1)."""
    try:
        account, labels = parse_grant(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SPEC") from None
    result = _call(state_dir, "sim-grant", {"account": account, "labels": labels})
    granted = ", ".join(f"{k}={_signed(v[0])}..{_signed(v[1])}"
                        for k, v in result["labels"].items())
    click.echo(f"{result['account']}: {granted or 'no label'}")


@sim.command()
@_state_dir
@click.argument("file", type=click.File("rb"))
def replay(state_dir: Path, file: Any) -> None:
    """Emit the lines of FILE on every event stream, byte for byte (UTF-8 or not)."""
    result = _call(state_dir, "sim-replay", stdin=file.read())
    click.echo(f"{result['emitted']} events emitted")


@sim.command()
@_state_dir
@click.option("--json", "as_json", is_flag=True, help="A JSON list instead of a table.")
def reviews(state_dir: Path, as_json: bool) -> None:
    """Every review the CI (or anyone) posted with `gerrit review`."""
    rows = _call(state_dir, "sim-reviews")
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no reviews yet")
        return
    for row in rows:
        labels = " ".join(f"{k}{v:+d}" for k, v in row["labels"].items()) or "-"
        first = (row["message"].splitlines() or [""])[0]
        click.echo(f"{row['change']},{row['patchset']}  {row['author']:<12} {labels:<12} {first}")
