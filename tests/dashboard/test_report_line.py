"""The build page's report line when Gerrit refused the vote, or the change closed first."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.models import Report, ReportState


def test_a_refused_vote_is_shown_with_gerrits_words(client: FlaskClient, world: Any,
                                                    dash_sessions: sessionmaker[Session]) -> None:
    refusal = 'Applying label "Verified": -1 is restricted'
    with dash_sessions() as session, session.begin():
        report = session.scalar(select(Report).where(Report.build_id == world.finished_id))
        assert report is not None
        report.state, report.label_refused, report.last_error = (
            ReportState.LABEL_REFUSED, refusal, refusal)
    response = client.get(f"/builds/{world.finished_id}")
    html = response.get_data(as_text=True)
    line = html.split("<h2>Report</h2>", 1)[1]
    assert "label-refused" in line
    assert f"Gerrit refused the vote: {escape(refusal)}" in line
    assert "<code>gerrit.label</code>" in line and "posted without it" in line
    assert client.get(f"/api/builds/{world.finished_id}").get_json()["report"][
        "label_refused"] == refusal


def test_a_report_withheld_from_a_closed_change_says_why(
        client: FlaskClient, world: Any, dash_sessions: sessionmaker[Session]) -> None:
    with dash_sessions() as session, session.begin():
        report = session.scalar(select(Report).where(Report.build_id == world.finished_id))
        assert report is not None
        report.state, report.last_error = ReportState.NOT_SENT, "change closed (ABANDONED)"
    html = client.get(f"/builds/{world.finished_id}").get_data(as_text=True)
    line = html.split("<h2>Report</h2>", 1)[1]
    assert "<dt>State</dt><dd>not-sent</dd>" in line
    assert "change closed (ABANDONED): the change closed before the report went out" in line
    assert "<dt>Last error</dt>" not in line
    assert client.get(f"/api/builds/{world.finished_id}").get_json()["report"][
        "not_sent"] == "change closed (ABANDONED)"
