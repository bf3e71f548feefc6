"""The devstack-hyperv job's rendered files: complete, parseable, and safe
against hostile Gerrit text. The shell scripts that can run here run for real
(bash, git); only the OpenStack CLIs are stand-ins at the PATH seam."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest

from ci.changes import ChangeInfo
from ci.config import Config, parse_config
from runners import lab_check, provision
from runners.job_values import tempest_serial_regex
from runners.powershell import ps_quote, syntax_errors
from runners.ps_check import check_script
from runners.render import (
    LINUX_TEMPLATES,
    TEMPLATES,
    WINDOWS_TEMPLATES,
    RenderedJob,
    RenderError,
    make_environment,
    render_command,
    render_job,
)

SECRETS = {
    "admin_password": "adm1n-Pässword",
    "service_password": "s3rv%ce@pw/1",
    "rabbit_password": "r@bbit:pw%2F",
    "database_password": "db-pw",
}

HOSTILE_SUBJECT = (
    "Fix it'; rm -rf / #\n$(touch pwned) `touch pwned2` \"dq\" ‘smart’ ${HOME} "
    "修复 Hyper-V 驱动 Zoë & | > out.txt"
)
HOSTILE_OWNER = "Zoë O'Brien $(id) <zoe@example.org>\r\n; Remove-Item C:\\ -Recurse"
HOSTILE_BRANCH = "stable/2023.1'; rm -rf ~; echo '$(whoami)"
MARKERS = ["rm -rf / #", "rm -rf ~", "touch pwned", "修复", "Zoë", "Remove-Item C:", "whoami",
           "$(id)", "‘smart’"]


def make_config(tmp: Path | None = None, **job: Any) -> Config:
    job_data: dict[str, Any] = {"type": "devstack-hyperv",
                                "image": "https://images.example.org/cirros-0.6.2-x86_64-disk.vhdx",
                                **job}
    if tmp is not None:
        job_data.update(
            devstack_dir=str(tmp / "stack" / "devstack"),
            tempest_dir=str(tmp / "stack" / "tempest"),
            workspace=str(tmp / "ws"),
        )
    winrm = {"username": "Administrator", "password": {"password_env": "HV_PW"}}
    ssh = {"username": "stack", "key_file": "/k", "known_hosts": "/kh"}
    return parse_config({
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/k", "known_hosts": "/kh"},
        "projects": [{"name": "openstack/nova", "jobs": ["hyperv"]}],
        "jobs": {"hyperv": job_data},
        "nodes": [
            {"name": "devstack-1", "label": "devstack", "address": "10.0.0.5", "ssh": ssh},
            {"name": "hv-1", "label": "hyperv", "address": "10.0.0.11", "winrm": winrm},
            {"name": "hv-2", "label": "hyperv", "address": "10.0.0.12", "winrm": winrm},
        ],
    })


def make_change(**fields: Any) -> ChangeInfo:
    data: dict[str, Any] = {
        "project": "openstack/nova",
        "branch": "unmaintained/2023.1",  # nova's in-tree driver lives there, not on master
        "number": 12345,
        "patchset": 3,
        "ref": "refs/changes/45/12345/3",
        "revision": "a" * 40,
        "subject": "Hyper-V: fix resize",
        "owner_name": "Jane Doe <jane@example.org>",
    }
    data.update(fields)
    return ChangeInfo(**data)


def render(config: Config | None = None, change: ChangeInfo | None = None) -> RenderedJob:
    config = config or make_config()
    return render_job(config, "hyperv", change or make_change(), config.nodes, SECRETS, 7)


def test_file_names_cover_every_node_and_template() -> None:
    rendered = render()
    expected = {f"devstack-1-{name}" for name in LINUX_TEMPLATES}
    expected |= {f"devstack-1-{n}" for n in
                 ("hyperv-hosts.txt", "tempest-exclude.txt", "tempest-exclude-parallel.txt")}
    for node in ("hv-1", "hv-2"):
        expected |= {f"{node}-{name}" for name in WINDOWS_TEMPLATES}
    assert set(rendered) == expected
    assert "devstack-1-local.conf" in rendered
    assert "hv-1-teardown.ps1" in rendered
    assert "hv-2-nova.conf" in rendered
    assert rendered.for_node("hv-1", "teardown") == rendered["hv-1-teardown.ps1"]
    assert rendered.for_node("hv-2", "nova.conf") == rendered["hv-2-nova.conf"]
    install = rendered.file_for("hv-1", "install")
    assert install.remote_path == "C:\\OpenStack\\hyperv-ci\\install.ps1"
    assert rendered.path("devstack-1", "bundle") == "/opt/stack/hyperv-ci/change.bundle"
    assert rendered["devstack-1-hyperv-hosts.txt"] == "hv-1\nhv-2\n"


# Templates a job's render does not produce: provisioning's scripts for the
# parent host and the node (runners/provision.py), the WinRM executor's file
# transfer helpers (runners/winrm.py) and the lab check's probes
# (runners/lab_check.py; the node probe is rendered and run in
# tests/runners/test_lab_check.py).
OUTSIDE_THE_JOB = {
    "provision-revert.ps1": lambda: provision.render(
        "provision-revert.ps1.j2", vm="hv-1 'ü'", checkpoint="clean; Stop-Computer"),
    "provision-power-off.ps1": lambda: provision.render("provision-power-off.ps1.j2",
                                                        vm="hv-1 'ü'"),
    "provision-status.ps1": lambda: provision.render(
        "provision-status.ps1.j2", vm="hv-1 'ü'", checkpoint="clean"),
    "provision-identity.ps1": lambda: provision.render(
        "provision-identity.ps1.j2", marker_path=provision.WINDOWS_MARKER_PATH),
    "lab-parent-probe.ps1": lambda: lab_check.render_parent_probe(["hv-1 'ü'", "hv-2"]),
    "lab-probe.ps1": None,
    # The WinRM executor's own transfer helpers (checked in tests/runners/test_ps_check.py).
    "winrm-put.ps1": None,
    "winrm-get.ps1": None,
}


def test_every_template_file_is_rendered() -> None:
    on_disk = {p.name.removesuffix(".j2") for p in TEMPLATES.glob("*.j2")
               if not p.name.startswith("_")}
    assert on_disk == set(LINUX_TEMPLATES) | set(WINDOWS_TEMPLATES) | set(OUTSIDE_THE_JOB)


@pytest.mark.parametrize("name", sorted(n for n, r in OUTSIDE_THE_JOB.items() if r))
def test_scripts_outside_the_job_pass_the_powershell_check(name: str) -> None:
    renderer = OUTSIDE_THE_JOB[name]
    assert renderer is not None
    script = renderer()
    assert check_script(script) == []
    assert "Stop-Computer" not in script or "'clean; Stop-Computer'" in script


def test_environment_is_strict() -> None:
    env = make_environment()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ missing }}").render()
    text = env.from_string("{{ a | sh }} {{ a | ps }}\n").render(a="it's")
    assert text == "'it'\"'\"'s' 'it''s'\n"


def test_templates_are_compiled_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build renders its files twice and each provisioning script once per node:
    the shared environment reads and compiles a template the first time only."""
    render()  # whatever this process compiled already
    loads: list[str] = []
    original = jinja2.FileSystemLoader.get_source

    def counted(self: jinja2.FileSystemLoader, env: jinja2.Environment, name: str) -> Any:
        loads.append(name)
        return original(self, env, name)

    monkeypatch.setattr(jinja2.FileSystemLoader, "get_source", counted)
    first, second = render(), render(change=make_change(revision="b" * 40))
    assert loads == []
    assert make_environment() is make_environment()
    assert first["hv-1-install.ps1"] != "" and "b" * 40 in "".join(second[n] for n in second)


def test_ini_filter_escapes_oslo_interpolation() -> None:
    env = make_environment()
    text = env.from_string("password = {{ a | ini }}\n").render(a="ab$cd${x}$$")
    assert text == "password = ab$$cd$${x}$$$$\n"


def _in_order(text: str, *needles: str) -> bool:
    at = 0
    for needle in needles:
        at = text.find(needle, at)
        if at < 0:
            return False
    return True


def test_windows_scripts_do_what_their_step_promises() -> None:
    rendered = render()
    teardown = rendered.for_node("hv-1", "teardown")
    # Services stopped before they are deleted; VMs and planned VMs removed;
    # folders and the event logs cleared.
    assert _in_order(teardown, "Stop-Service -Name $svc.Name", "sc.exe' -Arguments @('delete'")
    for needle in ("Stop-VM -VM $vm -TurnOff", "Remove-VM -VM $vm -Force",
                   "Msvm_PlannedComputerSystem", "'DestroySystem'",
                   "Remove-Tree -Path $path", "@('cl', $log)"):
        assert needle in teardown, needle
    for name in ("$Build", "$Logs", "$Instances"):
        assert name in teardown.split("foreach ($path in @(", 1)[1].split(")", 1)[0]
    cleanup = rendered.for_node("hv-1", "cleanup")
    for needle in ("Stop-Service", "Remove-VM -VM $vm -Force", "'DestroySystem'",
                   "Disconnect-IscsiTarget"):
        assert needle in cleanup, needle
    collect = rendered.for_node("hv-1", "collect-logs")
    assert "@('epl', $log" in collect  # event logs exported as .evtx ...
    assert "Get-WinEvent -LogName $log" in collect  # ... and as text


def test_bootstrap_installs_only_what_is_missing() -> None:
    plain = render().for_node("hv-1", "bootstrap")
    # Without installers configured a missing tool is reported, never guessed at.
    assert "is missing and windows.{1} is not configured" in plain
    sha = "ab" * 32
    config = make_config(windows={
        "python_installer": {"url": "https://deploy.example.org/python 3.11'.exe",
                             "sha256": sha},
        "git_installer": {"url": "https://deploy.example.org/Git.exe", "sha256": sha},
        "vswitch_adapter": "Ethernet 2"})
    text = render(config).for_node("hv-1", "bootstrap")
    assert syntax_errors(text) == []
    # Each install sits behind its check, so a second run changes nothing.
    assert _in_order(text, "Get-WindowsFeature -Name 'Hyper-V'", "if (-not $role.Installed)",
                     "Install-WindowsFeature -Name 'Hyper-V'", "restart the node")
    assert _in_order(text, "Get-VMSwitch -Name $VSwitch", "if (-not $switch)",
                     "New-VMSwitch -Name $VSwitch -NetAdapterName $VSwitchAdapter",
                     "SwitchType -ne 'External'")
    assert _in_order(text, "if (-not (Test-Path -LiteralPath $Python))",
                     "Get-Artefact -Name 'python_installer'",
                     "Invoke-Installer -Installer $installer",
                     "Invoke-Native -FilePath $Python -Arguments @('--version')")
    assert _in_order(text, "Get-Command -Name 'git.exe'", "Get-Artefact -Name 'git_installer'",
                     "'git.exe' -Arguments @('--version')")
    # Configured values are data: quoted literals, the quote inside doubled.
    assert "'https://deploy.example.org/python 3.11''.exe'" in text
    assert "$VSwitchAdapter = 'Ethernet 2'" in text


def test_powershell_scripts_parse_and_name_their_step() -> None:
    rendered = render()
    scripts = [f for f in rendered.files.values() if f.name.endswith(".ps1")]
    assert len(scripts) == 2 * 9
    for item in scripts:
        step = item.step.removesuffix(".ps1")
        assert item.text.splitlines()[0] == f"# hyperv-ci-step: {step}"
        assert "$ErrorActionPreference = 'Stop'" in item.text
        assert syntax_errors(item.text) == [], item.name
        # Windows PowerShell 5.1 has none of PowerShell 7's pipeline chains.
        assert not re.search(r"\s(&&|\|\|)\s", item.text), item.name
        assert item.payload().startswith(b"\xef\xbb\xbf")


def test_shell_scripts_pass_bash_syntax_check() -> None:
    rendered = render()
    for item in rendered.files.values():
        if item.name.endswith(".sh"):
            assert item.text.startswith("#!/bin/bash\n")
            assert "set -euo pipefail" in item.text
            proc = subprocess.run(["bash", "-n"], input=item.text, text=True,
                                  capture_output=True, check=False)
            assert proc.returncode == 0, (item.name, proc.stderr)


def test_local_conf_disables_compute_on_the_controller() -> None:
    text = render()["devstack-1-local.conf"]
    lines = text.splitlines()
    assert "disable_service n-cpu" in lines
    assert not any(re.match(r"enable_service\b.*\bn-cpu\b", line) for line in lines)
    assert "Q_ML2_PLUGIN_MECHANISM_DRIVERS=openvswitch,hyperv" in lines
    assert "Q_ML2_TENANT_NETWORK_TYPE=vlan" in lines
    assert "ML2_VLAN_RANGES=physnet1:500:2000" in lines
    assert "NOVA_REPO=/opt/stack/nova" in lines
    assert "NOVA_BRANCH=hyperv-ci-12345-3" in lines
    assert "ADMIN_PASSWORD=" + shlex.quote(SECRETS["admin_password"]) in lines
    assert "min_compute_nodes = 2" in lines
    assert any(line.startswith("IMAGE_URLS=") and ".vhdx" in line for line in lines)


def test_configs_point_at_the_controller_and_carry_encoded_secrets() -> None:
    rendered = render()
    nova = rendered["hv-2-nova.conf"]
    assert "host = hv-2" in nova
    assert "compute_driver = hyperv.HyperVDriver" in nova  # a nova change runs nova's driver
    assert "transport_url = rabbit://stackrabbit:r%40bbit%3Apw%252F@10.0.0.5:5672/" in nova
    assert "auth_url = http://10.0.0.5/identity" in nova
    agent = rendered["hv-2-neutron_hyperv_agent.conf"]
    assert "physical_network_vswitch_mappings = physnet1:external" in agent
    assert "firewall_driver = hyperv" in agent


def test_placeholders_when_no_secrets_are_given(tmp_path: Path) -> None:
    written = render_command(make_config(), "hyperv", "12345,3", tmp_path / "out")
    assert len(written) == 32
    text = "".join(p.read_text(encoding="utf-8-sig") for p in written)
    assert "PLACEHOLDER-admin-password" in text
    for secret in SECRETS.values():
        assert secret not in text
    assert "EXAMPLE change" in (tmp_path / "out" / "hv-1-bootstrap.ps1").read_text("utf-8-sig")


def test_secrets_must_be_complete() -> None:
    config = make_config()
    with pytest.raises(RenderError, match="rabbit_password"):
        render_job(config, "hyperv", make_change(), config.nodes,
                   {"admin_password": "a", "service_password": "b", "database_password": "c"})


def _without_literals(text: str, values: list[str], quote: Any) -> str:
    for value in values:
        text = text.replace(quote(value), "")
    return text


def test_hostile_change_text_is_only_ever_a_quoted_literal() -> None:
    # os-win: a nova change on a branch that is no release is refused before any text.
    change = make_change(subject=HOSTILE_SUBJECT, owner_name=HOSTILE_OWNER, branch=HOSTILE_BRANCH,
                         project="openstack/os-win")
    # The plugin's branch is set: local.conf takes no Gerrit text (a hostile
    # branch cannot name it, see test_render_devstack.py).
    rendered = render(make_config(networking_hyperv_ref="unmaintained/2023.1"), change)
    values = [HOSTILE_SUBJECT, HOSTILE_OWNER, HOSTILE_BRANCH]
    seen_in_sh = seen_in_ps = False
    for item in rendered.files.values():
        if item.name.endswith(".sh"):
            seen_in_sh |= shlex.quote(HOSTILE_SUBJECT) in item.text
            rest = _without_literals(item.text, values, shlex.quote)
            bash = subprocess.run(["bash", "-n"], input=item.text, text=True,
                                  capture_output=True, check=False)
            assert bash.returncode == 0, bash.stderr
        elif item.name.endswith(".ps1"):
            seen_in_ps |= ps_quote(HOSTILE_SUBJECT) in item.text
            rest = _without_literals(item.text, values, ps_quote)
            assert syntax_errors(item.text) == [], item.name
        else:
            rest = item.text  # configs and data files never carry Gerrit text
        for marker in MARKERS:
            assert marker not in rest, (item.name, marker)
    assert seen_in_sh and seen_in_ps


def test_hostile_project_names_are_refused() -> None:
    for project in ("openstack/../../etc", "openstack/nova; rm -rf /", "-rf", "a/b\nc"):
        with pytest.raises(RenderError):
            render(change=make_change(project=project))
    with pytest.raises(RenderError):
        render(change=make_change(revision="HEAD; rm -rf /"))


def test_node_counts_must_match_the_job() -> None:
    config = make_config()
    with pytest.raises(RenderError, match="2 hyperv"):
        render_job(config, "hyperv", make_change(), config.nodes[:2], SECRETS)


def test_compute_driver_follows_branch_and_project() -> None:
    in_tree = make_config(compute_driver="hyperv.driver.HyperVDriver")
    nova = render(in_tree, make_change(branch="stable/2023.1"))["hv-1-nova.conf"]
    assert "compute_driver = hyperv.driver.HyperVDriver" in nova
    with pytest.raises(RenderError, match="in-tree"):
        render(in_tree, make_change(branch="master"))
    with pytest.raises(RenderError, match="in-tree"):
        render(in_tree, make_change(branch="stable/2024.1"))
    hyperv = render(in_tree, make_change(project="openstack/compute-hyperv"))
    assert "compute_driver = compute_hyperv.driver.HyperVDriver" in hyperv["hv-1-nova.conf"]
    assert "_REPO=" not in hyperv["devstack-1-local.conf"]
    with pytest.raises(RenderError, match="not a Hyper-V driver"):
        render(make_config(compute_driver="libvirt.LibvirtDriver"))


def test_serial_regex_selects_included_serial_tests_only() -> None:
    job = make_config().jobs["hyperv"]
    pattern = re.compile(tempest_serial_regex(job))  # type: ignore[arg-type]
    assert pattern.search("tempest.api.compute.servers.test_resize.T.test_x[id-1]")
    assert not pattern.search("tempest.api.compute.servers.test_list.T.test_x")
    assert not pattern.search("neutron_tempest.api.test_resize.T.test_x")
    rendered = render()
    # The default excludes (IPv6 addressing) and then the serial tests.
    assert rendered["devstack-1-tempest-exclude-parallel.txt"].splitlines() == [
        r"tempest\.scenario\.test_network_v6\.TestGettingAddress",
        r"\.test_resize", r"\.test_shelve", r"\.test_snapshot"]


# ------------------------------------------------------------ scripts, run


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, text=True,
                          capture_output=True).stdout.strip()


def _write(rendered: RenderedJob, name: str) -> Path:
    item = rendered.files[name]
    path = Path(item.remote_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(item.payload())
    return path


def test_prepare_checkout_unpacks_the_bundle(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    _git("init", "-q", "-b", "main", cwd=source)
    (source / "README").write_text("nova\n")
    _git("add", "README", cwd=source)
    _git("-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q", "-m", "x", cwd=source)
    revision = _git("rev-parse", "HEAD", cwd=source)
    change = make_change(revision=revision, subject=HOSTILE_SUBJECT, owner_name=HOSTILE_OWNER,
                         branch=HOSTILE_BRANCH, project="openstack/os-win")
    rendered = render(make_config(tmp_path, networking_hyperv_ref="unmaintained/2023.1"), change)
    (tmp_path / "ws").mkdir()
    _git("bundle", "create", "-q", rendered.path("devstack-1", "bundle"), "main", cwd=source)
    script = _write(rendered, "devstack-1-prepare-checkout.sh")
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True,
                          text=True, encoding="utf-8", check=False)
    assert proc.returncode == 0, proc.stderr
    target = tmp_path / "stack" / "os-win"
    assert _git("rev-parse", "HEAD", cwd=target) == revision
    assert _git("branch", "--show-current", cwd=target) == "hyperv-ci-12345-3"
    assert f"subject: {HOSTILE_SUBJECT}\n" in proc.stdout
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def _fake_openstack(bin_dir: Path, services: list[dict], agents: list[dict], *,
                    rendezvous: bool = False, failing: str = "") -> None:
    """`openstack` answering the two listings from files. With `rendezvous`, each
    listing waits (up to 5 s) until the other has started, and fails if it never
    does: the listings pass only when they run side by side. `failing` ("compute"
    or "network") makes that listing exit 1."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "services.json").write_text(json.dumps(services))
    (bin_dir / "agents.json").write_text(json.dumps(agents))
    meet = ""
    if rendezvous:
        here = shlex.quote(str(bin_dir))
        meet = (f'touch {here}/started-"$1"; other=compute; [ "$1" = compute ] && other=network\n'
                "for _ in $(seq 50); do\n"
                f'  [ -e {here}/started-"$other" ] && break; sleep 0.1\n'
                "done\n"
                f'[ -e {here}/started-"$other" ] || {{ echo "ran alone" >&2; exit 3; }}\n')
    fake = bin_dir / "openstack"
    fake.write_text(
        "#!/bin/bash\n"
        + meet
        + (f'[ "$1" = {failing} ] && {{ echo "HTTP 503" >&2; exit 1; }}\n' if failing else "")
        + f"case \"$1 $2\" in\n"
        f"  'compute service') cat {shlex.quote(str(bin_dir / 'services.json'))} ;;\n"
        f"  'network agent') cat {shlex.quote(str(bin_dir / 'agents.json'))} ;;\n"
        "  *) exit 2 ;;\n"
        "esac\n"
    )
    manage = bin_dir / "nova-manage"
    manage.write_text(f"#!/bin/bash\necho \"$@\" > {shlex.quote(str(bin_dir / 'discovered'))}\n")
    fake.chmod(0o755)
    manage.chmod(0o755)


def _run_check(tmp_path: Path, services: list[dict], agents: list[dict],
               **fake: Any) -> tuple[int, Path]:
    config = make_config(tmp_path, services_timeout=1)
    rendered = render(config)
    for name in ("devstack-1-check-services.sh", "devstack-1-hyperv-hosts.txt"):
        _write(rendered, name)
    devstack = tmp_path / "stack" / "devstack"
    devstack.mkdir(parents=True)
    (devstack / "openrc").write_text("export OS_CLOUD=devstack-admin\n")
    bin_dir = tmp_path / "bin"
    _fake_openstack(bin_dir, services, agents, **fake)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(tmp_path / "ws" / "check-services.sh")], env=env,
                          capture_output=True, text=True, check=False)
    return proc.returncode, bin_dir


def _up(host: str) -> tuple[dict, dict]:
    return (
        {"Binary": "nova-compute", "Host": host, "State": "up", "Status": "enabled"},
        {"Agent Type": "HyperV agent", "Host": host, "Alive": True, "State": True},
    )


def test_check_services_passes_when_every_host_is_up(tmp_path: Path) -> None:
    (s1, a1), (s2, a2) = _up("hv-1"), _up("hv-2")
    rc, bin_dir = _run_check(tmp_path, [s1, s2], [a1, a2])
    assert rc == 0
    assert (bin_dir / "discovered").read_text().strip() == "cell_v2 discover_hosts --verbose"


def test_check_services_lists_services_and_agents_side_by_side(tmp_path: Path) -> None:
    (s1, a1), (s2, a2) = _up("hv-1"), _up("hv-2")
    rc, bin_dir = _run_check(tmp_path, [s1, s2], [a1, a2], rendezvous=True)
    assert rc == 0
    assert (bin_dir / "discovered").exists()


@pytest.mark.parametrize("failing", ["compute", "network"])
def test_check_services_fails_when_either_listing_fails(tmp_path: Path, failing: str) -> None:
    (s1, a1), (s2, a2) = _up("hv-1"), _up("hv-2")
    rc, bin_dir = _run_check(tmp_path, [s1, s2], [a1, a2], failing=failing)
    assert rc == 1
    assert not (bin_dir / "discovered").exists()


def test_check_services_fails_on_a_dead_agent(tmp_path: Path) -> None:
    (s1, a1), (s2, a2) = _up("hv-1"), _up("hv-2")
    rc, bin_dir = _run_check(tmp_path, [s1, s2], [a1, {**a2, "Alive": False}])
    assert rc == 1
    assert not (bin_dir / "discovered").exists()
