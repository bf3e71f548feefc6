"""The Hyper-V nodes' settings: validated as a real lab needs them, rendered into the scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ci.config import ConfigError, DevstackHypervJob, parse_config
from runners.ps_check import check_script
from runners.render import render_command
from runners.windows_values import ACCOUNT_PASSWORD_PLACEHOLDER
from tests.runners.test_render import make_change, make_config, render

SHA = "ab" * 32
ACCOUNT = {"username": "HVCI\\nova-svc", "password": {"password_env": "HV_ACCOUNT_PW"}}
FULL = {
    "python_installer": {"url": "https://deploy.example.org/python-3.11.9-amd64.exe",
                         "sha256": SHA},
    "git_installer": {"url": "http://deploy.example.org/Git-2.45.1-64-bit.exe", "sha256": SHA},
    "tools": {"openstack_service": {"url": "https://deploy.example.org/OpenStackService.exe",
                                    "sha256": SHA},
              "qemu_img": {"path": "/srv/hyperv-ci/qemu-img.exe", "sha256": SHA.upper()},
              "mkisofs": {"url": "https://deploy.example.org/mkisofs.exe", "sha256": SHA}},
    "service_account": ACCOUNT,
    "migration_networks": ["10.20.0.0/24"],
    "vswitch_adapter": "Ethernet 2",
}


def config_error(windows: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        make_config(windows=windows)
    return str(caught.value)


def windows_render(windows: dict[str, Any] | None = None, **job: Any) -> Any:
    config = make_config(windows=FULL if windows is None else windows, **job)
    return render(config, make_change(branch="stable/2023.1"))


@pytest.fixture(autouse=True)
def _account_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HV_ACCOUNT_PW", "Acc0unt-Pässword'1")


def test_unc_paths_are_refused_naming_the_key_and_the_second_hop() -> None:
    text = config_error({"python_installer": "\\\\deploy\\share\\python.exe"})
    assert text.startswith("jobs.hyperv.devstack-hyperv.windows.python_installer:")
    assert "second hop" in text and "UNC" in text
    text = config_error({"tools": {"mkisofs": {"url": "\\\\deploy\\share\\mkisofs.exe",
                                               "sha256": SHA}}})
    assert "windows.tools.mkisofs.url:" in text and "second hop" in text
    text = config_error({"git_installer": {"path": "//deploy/share/git.exe", "sha256": SHA}})
    assert "windows.git_installer.path:" in text and "second hop" in text


def test_every_artefact_needs_a_sha256_of_64_hex_digits() -> None:
    text = config_error({"python_installer": {"url": "https://x.example/python.exe"}})
    assert "windows.python_installer:" in text and "sha256 is required" in text
    text = config_error({"tools": {"qemu_img": {"url": "https://x.example/q.exe",
                                                "sha256": "abc"}}})
    assert "windows.tools.qemu_img.sha256:" in text and "64 hexadecimal" in text
    text = config_error({"tools": {"qemu_img": {"url": "ftp://x.example/q.exe", "sha256": SHA}}})
    assert "http:// or https://" in text
    text = config_error({"python_installer": {"url": "https://x.example/p.exe", "path": "/p",
                                              "sha256": SHA}})
    assert "exactly one" in text


def test_service_account_is_a_domain_user_with_a_password_reference() -> None:
    assert "DOMAIN\\user" in config_error(
        {"service_account": {"username": "nova", "password": {"password_env": "X"}}})
    assert "password_env or password_file" in config_error(
        {"service_account": {"username": "HVCI\\nova", "password": {}}})
    config = make_config(windows={"service_account": ACCOUNT})
    assert "Acc0unt-Pässword'1" in config.secrets()  # so every log redacts it


def test_services_run_as_the_account_with_the_logon_right() -> None:
    text = windows_render().for_node("hv-1", "configure-services")
    assert "$ServiceUser = 'HVCI\\nova-svc'" in text
    # The password is data in a quoted literal, its quote doubled.
    assert "$ServicePassword = 'Acc0unt-Pässword''1'" in text
    assert "-Credential $credential" in text
    # SeServiceLogonRight through secedit, applied for USER_RIGHTS only.
    for needle in ("'/export', '/cfg', $exported, '/areas', 'USER_RIGHTS'",
                   "'SeServiceLogonRight = '", "'/configure', '/db'",
                   "Add-LocalGroupMember -SID 'S-1-5-32-544'"):
        assert needle in text, needle
    plain = render(change=make_change(branch="stable/2023.1")).for_node("hv-1",
                                                                         "configure-services")
    assert "$ServiceUser = ''" in plain and "running as LocalSystem" in plain


def test_the_preview_never_holds_the_account_password(tmp_path: Path) -> None:
    config = make_config(windows={"service_account": ACCOUNT})
    written = render_command(config, "hyperv", "5,1", tmp_path / "out",
                             change=make_change(branch="stable/2023.1"))
    texts = "".join(p.read_text(encoding="utf-8-sig") for p in written)
    assert "Acc0unt-Pässword" not in texts
    assert f"$ServicePassword = '{ACCOUNT_PASSWORD_PLACEHOLDER}'" in texts


def test_bootstrap_ensures_iscsi_and_migration() -> None:
    text = windows_render().for_node("hv-1", "bootstrap")
    assert "Set-Service -Name 'MSiSCSI' -StartupType Automatic" in text
    assert "Start-Service -Name 'MSiSCSI'" in text
    assert "Enable-VMMigration" in text
    assert ("Set-VMHost -VirtualMachineMigrationAuthenticationType $MigrationAuthentication "
            "-UseAnyNetworkForMigration $false") in text
    assert "Add-VMMigrationNetwork -Subnet $subnet" in text
    assert "    '10.20.0.0/24'\n" in text
    credssp = windows_render({"migration_authentication": "CredSSP"}).for_node("hv-1",
                                                                              "bootstrap")
    assert "$MigrationAuthentication = 'CredSSP'" in credssp
    assert "-UseAnyNetworkForMigration $true" in credssp
    assert "'Kerberos' or 'CredSSP'" in config_error({"migration_authentication": "NTLM"})


def test_artefacts_come_by_url_or_upload_and_are_hash_checked() -> None:
    text = windows_render().for_node("hv-1", "bootstrap")
    assert "$PythonInstallerUrl = 'https://deploy.example.org/python-3.11.9-amd64.exe'" in text
    assert f"$PythonInstallerSha256 = '{SHA}'" in text
    # A worker file lands in the staging folder; the hash is normalised to lower case.
    assert "$QemuImgUploaded = 'C:\\OpenStack\\hyperv-ci\\artefacts\\qemu-img.exe'" in text
    assert f"$QemuImgSha256 = '{SHA}'" in text and "$QemuImgUrl = ''" in text
    for needle in ("Invoke-WebRequest -Uri $Url -OutFile $partial -UseBasicParsing",
                   "Get-FileHash -LiteralPath $partial -Algorithm SHA256",
                   "if ($actual -ne $Hash) {", "does not match the configured"):
        assert needle in text, needle
    assert "\\\\" not in text.replace("\\\\.", "")  # no share anywhere


def test_limit_cpu_features_is_on_by_default_and_configurable() -> None:
    assert "\nlimit_cpu_features = True\n" in windows_render({}).for_node("hv-1", "nova.conf")
    off = windows_render({"limit_cpu_features": False}).for_node("hv-1", "nova.conf")
    assert "\nlimit_cpu_features = False\n" in off


def test_teardown_skips_vms_without_the_hyperv_module() -> None:
    text = windows_render().for_node("hv-1", "teardown")
    guard = text.index("if (Test-HyperVModule) {")
    assert guard < text.index("@(Get-VM)") < text.index("Hyper-V module not installed")
    assert "Get-Module -ListAvailable -Name 'Hyper-V'" in text


def test_collect_logs_keeps_what_an_operator_needs() -> None:
    text = windows_render().for_node("hv-1", "collect-logs")
    assert "Get-WinEvent -ListLog '*'" in text and "$_.RecordCount -gt 0" in text
    for name in ("systeminfo.txt", "hotfixes.txt", "ipconfig.txt", "net-adapters.txt",
                 "vmswitch.txt", "disks.txt", "firewall.txt", "services.txt",
                 "pip-freeze.txt"):
        assert f"Save-Output -Name '{name}'" in text, name
    for needle in ("'systeminfo.exe'", "Get-HotFix", "'ipconfig.exe' -Arguments @('/all')",
                   "Get-NetAdapter", "Get-VMSwitch", "Get-Disk", "Get-Volume",
                   "Get-NetFirewallProfile", "@('qc', $svc.Name)", "'pip', 'freeze'"):
        assert needle in text, needle


def test_windows_scripts_use_only_documented_cmdlets_and_parameters() -> None:
    rendered = windows_render()
    scripts = [f for f in rendered.node_files("hv-1") if f.name.endswith(".ps1")]
    assert scripts
    for item in scripts:
        assert check_script(item.text) == [], item.name


def test_config_example_windows_section_is_valid() -> None:
    from ci.config import load_config

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "etc" / "openstack-hyperv.yaml")
    job = next(iter(config.jobs.values()))
    assert isinstance(job, DevstackHypervJob)
    windows = job.windows
    assert windows.service_account is not None
    assert all(a is not None and a.sha256 for a in windows.artefacts().values())


def test_parse_rejects_unknown_windows_keys() -> None:
    with pytest.raises(ConfigError, match=r"windows\.installers"):
        parse_config({
            "gerrit": {"host": "h", "username": "u", "key_file": "/k", "known_hosts": "/kh"},
            "projects": [{"name": "p", "jobs": ["j"]}],
            "jobs": {"j": {"type": "devstack-hyperv", "windows": {"installers": {}}}},
        })
