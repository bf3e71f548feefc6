"""The PowerShell check: every rendered script passes it, and each rule catches its mistake."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ci.changes import ChangeInfo
from ci.config import Config, parse_config
from runners import ps_check
from runners.ps_check import check_script, resolve_command, script_end
from runners.render import render_job
from runners.winrm import helper_script

SHA = "ab" * 32
SECRETS = {"admin_password": "a'dm$in", "service_password": "s", "rabbit_password": "r",
           "database_password": "d"}


def make_config(**job: Any) -> Config:
    winrm = {"username": "Administrator", "password": {"password_env": "HV_PW"}}
    ssh = {"username": "stack", "key_file": "/k", "known_hosts": "/kh"}
    return parse_config({
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/k", "known_hosts": "/kh"},
        "projects": [{"name": "openstack/nova", "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {"type": "devstack-hyperv",
                            "image": "https://images.example/cirros-0.6.2-x86_64.vhdx", **job}},
        "nodes": [
            {"name": "devstack-1", "label": "devstack", "address": "10.0.0.5", "ssh": ssh},
            {"name": "hv-1", "label": "hyperv", "address": "10.0.0.11", "winrm": winrm},
            {"name": "hv-2", "label": "hyperv", "address": "10.0.0.12", "winrm": winrm},
        ],
    })


def everything_on() -> dict[str, Any]:
    """Every optional Windows setting turned on, so every branch of the templates renders."""
    return {
        "windows": {
            "python_installer": {"url": "https://python.example/python-3.11.9.exe",
                                 "sha256": SHA},
            "git_installer": {"path": "/srv/installers/Git 64-bit.exe", "sha256": SHA},
            "tools": {
                "openstack_service": {"url": "https://tools.example/OpenStackService.exe",
                                      "sha256": SHA},
                "qemu_img": {"path": "/srv/tools/qemu-img.exe", "sha256": SHA},
                "mkisofs": {"url": "https://tools.example/mkisofs.exe", "sha256": SHA},
            },
            "vswitch_adapter": "Ethernet 2 — données",
            "service_account": {"username": "LAB\\svc-openstack",
                                "password": {"password_env": "SVC_PW"}},
            "migration_authentication": "CredSSP",
            "migration_networks": ["10.0.5.0/24", "fd00::/64"],
        },
    }


def change(project: str, branch: str) -> ChangeInfo:
    return ChangeInfo(project=project, branch=branch, number=12345, patchset=3,
                     ref="refs/changes/45/12345/3", revision="a" * 40,
                     subject="Zoë's fix ‘quoted’ $(x)", owner_name="Zoë <z@example.org>")


CASES = [
    pytest.param({}, change("openstack/nova", "stable/2023.1"), id="nova-defaults"),
    pytest.param(everything_on(), change("openstack/nova", "stable/2023.1"), id="nova-all-on"),
    pytest.param(everything_on(), change("openstack/compute-hyperv", "master"),
                 id="compute-hyperv-all-on"),
    pytest.param({}, change("openstack/networking-hyperv", "master"), id="networking-hyperv"),
]


@pytest.mark.parametrize(("job", "ref"), CASES)
def test_every_rendered_script_passes_the_check(job: dict[str, Any], ref: ChangeInfo,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVC_PW", "svc-Pässword'$x")
    config = make_config(**job)
    rendered = render_job(config, "hyperv", ref, config.nodes, SECRETS, 7)
    scripts = [f for f in rendered.files.values() if f.name.endswith(".ps1")]
    assert len(scripts) >= 2 * 9
    found = {f.name: [f"{p.line}:{p.column} {p.message}" for p in check_script(f.text)]
             for f in scripts}
    assert {name: problems for name, problems in found.items() if problems} == {}


def test_the_executors_own_scripts_pass_the_check() -> None:
    for name in ("winrm-put", "winrm-get"):
        script = helper_script(name, "C:\\OpenStack\\hyperv-ci\\x'ü.ps1")
        assert "$Path = 'C:\\OpenStack\\hyperv-ci\\x''ü.ps1'" in script
        assert check_script(script) == []


def kinds(script: str) -> list[tuple[str, str]]:
    return [(p.kind, p.message) for p in check_script(script)]


def test_misspelled_cmdlet_is_command_not_found() -> None:
    [problem] = check_script("$x = 1\n  Get-ChildItm -Path 'C:\\'\n")
    assert (problem.line, problem.column, problem.command) == (2, 3, "Get-ChildItm")
    assert problem.kind == ps_check.COMMAND_NOT_FOUND
    assert problem.message == (
        "The term 'Get-ChildItm' is not recognized as the name of a cmdlet, function, script "
        "file, or operable program. Check the spelling of the name, or if a path was included, "
        "verify that the path is correct and try again.")
    # Inside a pipeline, a script block and a sub-expression alike.
    assert len(check_script("Get-Item x | ForEach-Object { Wrte-Host $_ }\n")) == 1
    assert len(check_script("$v = \"$(Get-Dat)\"\n")) == 1


def test_names_resolve_as_powershell_resolves_them() -> None:
    script = "\n".join([
        "function Invoke-Step { param($Name) }",
        "Invoke-Step -Name x",  # the script's own function
        "get-childitem -path x",  # case-insensitive
        "gci x | % { $_ } | ? { $_ } | sort | select -First 1",  # built-in aliases
        "Hyper-V\\Get-VM -Name x",  # module-qualified
        "mkdir x; md y",  # built-in functions (about_Built-in_Functions)
        "sc.exe qc nova-compute; git --version; & 'wevtutil.exe' el",  # native tools
        "& $Exe -whatever; & (Join-Path $Bin 'x.exe') /q",  # computed: not checked by name
        ".\\setup.ps1 -Anything; C:\\Python311\\python.exe -V",  # by path
    ])
    assert check_script(script) == []
    assert resolve_command("ls", {}).name == "Get-ChildItem"
    # Aliases win over cmdlets and programs (about_Command_Precedence): `sc` is Set-Content.
    assert resolve_command("sc", {}).name == "Set-Content"
    assert [p.command for p in check_script("ntrights.exe +r SeServiceLogonRight\n")] == [
        "ntrights.exe"]
    assert [p.command for p in check_script("Get-VM\\Hyper-V\n")] == []  # a relative path


def test_parameter_the_cmdlet_lacks() -> None:
    [problem] = check_script("Get-Service -Name x -Recurse\n")
    assert problem.kind == ps_check.PARAMETER_NOT_FOUND
    assert problem.message == "A parameter cannot be found that matches parameter name 'Recurse'."
    assert (problem.parameter, problem.cmdlet, problem.column) == ("Recurse", "Get-Service", 21)
    # Checked on every command of a pipeline, through aliases too.
    assert len(check_script("Get-VM | Stop-VM -TurnOff -Kill\n")) == 1
    assert len(check_script("gsv -Bogus\n")) == 1


def test_ambiguous_prefix_is_refused() -> None:
    [problem] = check_script("Get-ChildItem -Path x -f\n")
    assert problem.kind == ps_check.AMBIGUOUS_PARAMETER
    assert problem.message == (
        "Parameter cannot be processed because the parameter name 'f' is ambiguous. "
        "Possible matches include: -File -Filter -Force.")
    # Common parameters take part: -Err is ErrorAction or ErrorVariable.
    assert kinds("Get-Item x -Err Stop\n")[0][0] == ps_check.AMBIGUOUS_PARAMETER


def test_prefix_alias_and_common_parameters_bind() -> None:
    script = "\n".join([
        "Get-ChildItem -Pa x -Filt '*.log' -Rec -Fo",  # unambiguous prefixes
        "Set-Service -ServiceName x -StartMode Manual",  # parameter aliases
        "Get-VM -VMName x",
        "Remove-Item x -ea SilentlyContinue -ErrorAction Stop -ev e -Verbose -wi -cf:$false",
        "Get-Item x -OutVariable o -PipelineVariable p -infa Continue -WarningAction Ignore",
        "Get-ChildItem -File -Directory -Hidden; Get-Content x -Raw -Encoding UTF8",  # dynamic
        "Where-Object Name -eq 'a'; Select-Object -ExpandProperty Name",
    ])
    assert check_script(script) == []


def test_risk_parameters_only_where_declared() -> None:
    # about_CommonParameters: WhatIf/Confirm are not common; Get-Item has neither.
    assert kinds("Get-Item x -WhatIf\n")[0][0] == ps_check.PARAMETER_NOT_FOUND
    assert check_script("Remove-Item x -WhatIf -Confirm:$false\n") == []


def test_functions_are_checked_against_their_param_block() -> None:
    script = "\n".join([
        "function Invoke-Native {",
        "    param(",
        "        [Parameter(Mandatory = $true)][Alias('Exe')][string]$FilePath,",
        "        [string[]]$Arguments = @()",
        "    )",
        "}",
        "function Simple { param($One) }",
        "Invoke-Native -FilePath x -Arg @('a') -Exe y -Verbose",
        "Invoke-Native -Path x",
        "Simple -Two 2",  # a simple function takes unknown parameters into $args
    ])
    problems = check_script(script)
    assert [(p.line, p.kind, p.parameter) for p in problems] == [
        (9, ps_check.PARAMETER_NOT_FOUND, "Path")]
    assert problems[0].cmdlet == "Invoke-Native"


def test_bad_enumerated_value() -> None:
    [problem] = check_script("Set-Service -Name MSiSCSI -StartupType Automatc\n")
    assert problem.kind == ps_check.VALUE_NOT_ENUM
    assert problem.message.startswith(
        "Cannot bind parameter 'StartupType'. Cannot convert value \"Automatc\" to type "
        "\"System.ServiceProcess.ServiceStartMode\".")
    assert "Automatic, Boot, Disabled, Manual, System" in problem.message
    [problem] = check_script("Set-VMHost -VirtualMachineMigrationAuthenticationType 'Kerbros'\n")
    assert "CredSSP, Kerberos" in problem.message
    # Case-insensitive; a variable or an expression is not judged.
    assert check_script("Set-Service x -StartupType automatic\n") == []
    assert check_script("Set-Service x -StartupType $Mode; Set-Service x -StartupType:$M\n") == []
    # A ValidateSet string parameter has its own message.
    problems = [p for p in check_script("Get-WinEvent -LogName x -Oldest:$true\n")]
    assert problems == []
    assert kinds("Set-Content x -Encoding UTF8NoBOM -Value 1\n")[0][0] == ps_check.VALUE_NOT_ENUM


def test_validate_set_message() -> None:
    catalog = ps_check.catalog()["cmdlets"]
    assert isinstance(catalog, dict)
    name, param, values = next(
        (name, pname, info["values"])
        for name, entry in sorted(catalog.items())
        for pname, info in entry["params"].items()
        if info.get("values") and re.fullmatch(r"(System\.)?String(\[\])?", info["type"]))
    [problem] = check_script(f"{name} -{param} NoSuchValue\n")
    assert problem.kind == ps_check.VALUE_NOT_IN_SET
    assert problem.message == (
        f"Cannot validate argument on parameter '{param}'. The argument \"NoSuchValue\" does "
        f"not belong to the set \"{','.join(values)}\" specified by the ValidateSet attribute. "
        "Supply an argument that is in the set and then try the command again.")


def test_script_end() -> None:
    assert script_end("Write-Output 1\nexit 42\n").exit_code == 42
    thrown = script_end("$x = 1\nthrow 'Hyper-V role missing — 缺少'\n")
    assert (thrown.kind, thrown.exit_code, thrown.line) == ("throw", 1, 2)
    assert thrown.message == "Hyper-V role missing — 缺少"
    # Inside a function or a branch nothing is evaluated.
    assert script_end("function F { exit 3 }\nif ($x) { throw 'no' }\n") is None
    assert script_end("exit $LASTEXITCODE\n") is None


def test_catalog_covers_whole_modules() -> None:
    catalog = ps_check.catalog()
    cmdlets = catalog["cmdlets"]
    assert isinstance(cmdlets, dict)
    modules = {entry["module"] for entry in cmdlets.values()}
    for module in ("Hyper-V", "ServerManager", "iSCSI", "IscsiTarget", "NetAdapter", "NetTCPIP",
                   "NetSecurity", "NetLbfo", "Storage", "DnsClient", "SmbShare", "International",
                   "ScheduledTasks", "Microsoft.PowerShell.Management",
                   "Microsoft.PowerShell.Utility", "Microsoft.PowerShell.Core",
                   "Microsoft.PowerShell.Security", "Microsoft.PowerShell.Archive",
                   "Microsoft.PowerShell.Diagnostics", "Microsoft.WSMan.Management",
                   "CimCmdlets", "pki", "Microsoft.PowerShell.LocalAccounts"):
        assert module in modules, module
    for name in ("Enable-VMMigration", "Get-FileHash", "Invoke-WebRequest", "Get-HotFix",
                 "Get-NetIPConfiguration", "Get-NetFirewallProfile", "Get-Disk",
                 "Get-IscsiSession", "Start-Transcript"):
        assert name in cmdlets, name
    assert catalog["common"]["ErrorAction"] == ["ea"]
    assert "ProgressAction" not in catalog["common"]  # PowerShell 7.4 only
    assert "FollowSymlink" not in cmdlets["Get-ChildItem"]["params"]  # PowerShell 6 only
    assert cmdlets["New-Item"]["sets"]["pathSet"]["mandatory"] == ["Path"]
    json.dumps(catalog)  # plain data


def test_provider_dynamic_parameters_bind_where_the_provider_page_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Today's 5.1 pages also list them in SYNTAX; about_FileSystem_Provider stays the
    # source should a page drop one. Remove Get-Content's own -Raw to see the table work.
    real = ps_check.catalog()
    pruned = json.loads(json.dumps(real))
    del pruned["cmdlets"]["Get-Content"]["params"]["Raw"]
    monkeypatch.setattr(ps_check, "catalog", lambda: pruned)
    ps_check._cmdlet.cache_clear()
    try:
        assert check_script("Get-Content x -Raw\n") == []
        assert kinds("Get-Item x -Raw\n")[0][0] == ps_check.PARAMETER_NOT_FOUND
    finally:
        ps_check._cmdlet.cache_clear()
