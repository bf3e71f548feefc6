"""The build page's verdict panel (templates/_verdict.html): its data, as a template global."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from ci.verdict_record import build_verdict as stored_verdict
from dashboard.context import db

bp = Blueprint("verdict", __name__)


@bp.app_template_global()
def build_verdict(build_id: int) -> dict[str, Any]:
    """The stored explanations of a build's failures and its signature matches."""
    return stored_verdict(db(), build_id)
