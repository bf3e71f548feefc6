"""Verdicts of `hyperv-ci lab check` on the devstack controller: pure functions.

The probe is one fixed POSIX sh script, run over SSH with its inputs as
positional arguments (never formatted into the script): it prints
`hyperv-ci-lab-fact KEY=VALUE` lines, which `parse_controller_facts` reads
into a typed record for `controller_verdicts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import paramiko

from ci.config import DevstackHypervJob, NodeConfig
from runners.base import CommandTimeout
from runners.lab_verdict import GIB, CheckResult, ProbeError, Thresholds, failed, passed

FACT_TAG = "hyperv-ci-lab-fact "
# $1 the devstack checkout, $2 the data interface ('' for none), $3 the devstack
# branch the job pins ('' when it follows each change's branch).
CONTROLLER_PROBE = r"""
d=$1; nic=$2; branch=$3
fact() { printf 'hyperv-ci-lab-fact %s=%s\n' "$1" "$2"; }
fact uid "$(id -u)"
fact user "$(id -un)"
if sudo -n true >/dev/null 2>&1; then fact sudo yes; else fact sudo no; fi
if [ -x "$d/stack.sh" ]; then fact stack_sh yes; else fact stack_sh no; fi
if [ -e "$d/.git" ]; then
    fact git yes
    fact head "$(git -C "$d" symbolic-ref --short -q HEAD || git -C "$d" rev-parse --short HEAD)"
    fact origin "$(git -C "$d" remote get-url origin 2>/dev/null)"
    if [ -n "$branch" ]; then
        ref="refs/heads/$branch"
    else
        ref=HEAD
    fi
    if git -C "$d" ls-remote --exit-code origin "$ref" >/dev/null 2>&1; then
        fact origin_has_ref yes
    else
        fact origin_has_ref no
    fi
else
    fact git no
fi
if [ -n "$nic" ]; then
    if [ -e "/sys/class/net/$nic" ]; then
        fact nic_state "$(cat "/sys/class/net/$nic/operstate")"
    else
        fact nic_state absent
    fi
fi
p=$d
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
fact disk_path "$p"
fact disk_free_kb "$(df -Pk -- "$p" | awk 'NR == 2 { print $4 }')"
fact mem_total_kb "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
"""


@dataclass(frozen=True)
class ControllerFacts:
    uid: int
    user: str
    sudo: bool
    stack_sh: bool
    git: bool
    head: str
    origin: str
    origin_has_ref: bool
    nic_state: str | None
    disk_path: str
    disk_free_kb: int
    mem_total_kb: int


def controller_probe_argv(job: DevstackHypervJob, node: NodeConfig) -> list[str]:
    """The probe's command line: the script and its inputs as separate arguments."""
    return ["sh", "-c", CONTROLLER_PROBE, "hyperv-ci-lab-probe", job.devstack_dir,
            node.data_interface or "", job.devstack_branch or ""]


def parse_controller_facts(stdout: str) -> ControllerFacts:
    values: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith(FACT_TAG):
            key, _, value = line[len(FACT_TAG):].partition("=")
            values[key] = value
    try:
        return ControllerFacts(
            uid=int(values["uid"]), user=values["user"], sudo=values["sudo"] == "yes",
            stack_sh=values["stack_sh"] == "yes", git=values["git"] == "yes",
            head=values.get("head", ""), origin=values.get("origin", ""),
            origin_has_ref=values.get("origin_has_ref") == "yes",
            nic_state=values.get("nic_state"), disk_path=values["disk_path"],
            disk_free_kb=int(values["disk_free_kb"]),
            mem_total_kb=int(values["mem_total_kb"]))
    except (KeyError, ValueError) as exc:
        raise ProbeError(f"the controller's probe output lacks or garbles {exc}") from None


def ssh_failure(node: NodeConfig, error: BaseException) -> CheckResult:
    """The `ssh` check's FAIL for a connection that did not come up, with its fix."""
    access = node.ssh
    assert access is not None  # a devstack node has an ssh section (config validation)
    cause = error.__cause__ or error
    text = str(error)
    target = f"{access.username}@{node.address}:{access.port}"
    if isinstance(error, CommandTimeout):
        return failed("ssh", node.name, f"{target}: the probe did not finish: {text}",
                      "a login that hangs (a profile script waiting for input, a stuck "
                      "NFS home): log in by hand and see")
    if isinstance(cause, paramiko.BadHostKeyException):
        fix = (f"the host key of {node.address} is not the one in {access.known_hosts}: if the "
               "host was reinstalled, check its fingerprint and replace the entry")
    elif "known_hosts" in text or "not found in" in text:
        fix = (f"add the host's key to {access.known_hosts} (ssh-keyscan -p {access.port} "
               f"{node.address}, checked against the host's published fingerprint)")
    elif isinstance(cause, paramiko.AuthenticationException):
        fix = (f"add the public key of {access.key_file} to ~{access.username}/.ssh/"
               "authorized_keys on the controller")
    else:
        fix = f"start sshd on the controller and let the worker reach {target}"
    return failed("ssh", node.name, f"cannot connect to {target}: {text}", fix)


def controller_verdicts(node: NodeConfig, job: DevstackHypervJob, facts: ControllerFacts,
                        limits: Thresholds) -> list[CheckResult]:
    """Every check of the controller after a successful probe (in the report's order)."""
    name = node.name
    access = node.ssh
    assert access is not None
    results = [passed("ssh", name, f"{access.username}@{node.address}:{access.port}, host key "
                      f"from {access.known_hosts}")]
    # devstack's stack.sh refuses to run as root ("stack.sh must not be run as root").
    if facts.uid == 0:
        results.append(failed("user", name, f"logged in as {facts.user} (uid 0): devstack's "
                              "stack.sh refuses to run as root",
                              "useradd -s /bin/bash -d /opt/stack -m stack, and use that "
                              "account in nodes.<controller>.ssh.username"))
    else:
        results.append(passed("user", name, f"{facts.user} (uid {facts.uid})"))
    results.append(passed("sudo", name, f"{facts.user} may sudo without a password")
                   if facts.sudo else
                   failed("sudo", name, f"`sudo -n true` fails for {facts.user}: devstack "
                          "installs packages and configures OVS through sudo",
                          f"echo '{facts.user} ALL=(ALL) NOPASSWD: ALL' > "
                          f"/etc/sudoers.d/{facts.user}"))
    results += _devstack(name, job, facts)
    results.append(_data_interface(node, facts))
    free = facts.disk_free_kb * 1024 / GIB
    results.append(
        passed("disk", name, f"{free:.1f} GiB free on {facts.disk_path}")
        if free >= limits.controller_free_gib else
        failed("disk", name, f"{free:.1f} GiB free on {facts.disk_path}, under "
               f"{limits.controller_free_gib:.0f} GiB", "free space there, or grow the disk"))
    memory = facts.mem_total_kb * 1024 / GIB
    results.append(
        passed("memory", name, f"{memory:.1f} GiB of memory")
        if memory >= limits.controller_memory_gib else
        failed("memory", name, f"{memory:.1f} GiB of memory, under "
               f"{limits.controller_memory_gib:.0f} GiB", "give the controller more memory"))
    return results


def _devstack(name: str, job: DevstackHypervJob, facts: ControllerFacts) -> list[CheckResult]:
    clone = f"git clone https://opendev.org/openstack/devstack {job.devstack_dir}"
    if not facts.stack_sh:
        return [failed("devstack-checkout", name, f"no executable stack.sh in "
                       f"{job.devstack_dir}", clone),
                failed("devstack-branch", name, "no devstack checkout", clone)]
    if not facts.git:
        # stack.sh.j2 then runs it as it is, whatever the change's branch.
        return [passed("devstack-checkout", name, f"{job.devstack_dir}/stack.sh (not a git "
                       "checkout: every build runs it as it is)"),
                passed("devstack-branch", name, "not a git checkout: the job does not move it")]
    results = [passed("devstack-checkout", name, f"{job.devstack_dir} at {facts.head}, origin "
                      f"{facts.origin or '(none)'}")]
    wanted = job.devstack_branch
    if not facts.origin_has_ref:
        what = f"branch {wanted}" if wanted else "its HEAD"
        results.append(failed("devstack-branch", name, f"origin {facts.origin or '(none)'} "
                              f"does not give {what}: each build fetches the branch from there",
                              f"git -C {job.devstack_dir} remote set-url origin "
                              "https://opendev.org/openstack/devstack"
                              + ("" if not wanted else " (or fix jobs.<job>.devstack_branch)")))
    else:
        results.append(passed("devstack-branch", name,
                              f"origin has {wanted}" if wanted else
                              "origin reachable; each build fetches the change's branch"))
    return results


def _data_interface(node: NodeConfig, facts: ControllerFacts) -> CheckResult:
    nic = node.data_interface
    if nic is None:
        return passed("data-interface", node.name, "no data_interface configured: the CI adds "
                      "no NIC to the physical network's bridge (it must already have one)")
    if facts.nic_state == "absent":
        return failed("data-interface", node.name, f"no interface {nic} on the controller",
                      "fix nodes.<controller>.data_interface (ip -br link lists them)")
    if facts.nic_state == "down":
        return failed("data-interface", node.name, f"{nic} is down",
                      f"ip link set dev {nic} up, and check its cable/port on the data network")
    return passed("data-interface", node.name, f"{nic} is {facts.nic_state}")
