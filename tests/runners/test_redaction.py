"""Secret masking: every form the job writes a secret in is masked, in text and in bytes."""

from __future__ import annotations

import shlex
from urllib.parse import quote

from runners.redaction import REDACTED, Redactor, secret_forms
from runners.render import make_environment

SECRET = "winrm-Sé'cret/1@$x%"


def test_forms_cover_every_encoding_the_job_uses() -> None:
    forms = secret_forms(SECRET)
    assert SECRET in forms
    assert quote(SECRET, safe="") in forms  # transport_url
    assert "winrm-S%C3%A9%27cret%2F1%40%24x%25" in forms
    assert shlex.quote(SECRET) in forms  # local.conf
    assert "winrm-Sé'cret/1@$$x%" in forms  # oslo.config's `$$`
    assert "'winrm-Sé''cret/1@$x%'" in forms  # PowerShell literal
    assert "winrm-Sé&#x27;cret/1@$x%" in forms  # HTML
    assert secret_forms("ab") == set()  # too short to mask without blanking words


def test_forms_match_what_the_templates_emit() -> None:
    env = make_environment()
    forms = secret_forms(SECRET)
    for filter_name in ("sh", "ps", "ini"):
        text = env.from_string(f"{{{{ s | {filter_name} }}}}").render(s=SECRET)
        assert text in forms, filter_name


def test_redactor_masks_each_form_whole() -> None:
    redact = Redactor([SECRET, "", "x"])
    text = (f"ADMIN_PASSWORD={shlex.quote(SECRET)}\n"
            f"transport_url = rabbit://u:{quote(SECRET, safe='')}@h:5672/\n"
            f"password = {SECRET.replace('$', '$$')}\n")
    assert redact(text) == (f"ADMIN_PASSWORD={REDACTED}\n"
                            f"transport_url = rabbit://u:{REDACTED}@h:5672/\n"
                            f"password = {REDACTED}\n")
    assert Redactor([])("unchanged") == "unchanged"


def test_redactor_finds_secrets_in_bytes() -> None:
    redact = Redactor([SECRET])
    assert redact.found_in(b"\x00\x01" + SECRET.encode("utf-8") + b"\xff")
    assert redact.found_in(b"\x00" + quote(SECRET, safe="").encode("utf-16-le"))
    assert redact.found_in(b"\x00" + SECRET.encode("cp1252"))
    assert not redact.found_in(b"\x00\x01 nothing here \xff")
