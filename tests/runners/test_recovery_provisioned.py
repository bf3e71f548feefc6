"""A provisioned lab heals itself: real `hyperv-ci worker` processes against the
simulated lab whose Hyper-V nodes are VMs of a simulated parent host.

The first build hangs in stack.sh; while it runs, a file and a service are left
on hv-1 (what a build leaves behind). The worker is killed with SIGKILL. The
survivor's reaper reaps the build; its keeper turns the three VMs off (the
dead build's stack.sh ends with the controller's), checks them on the parent
and returns them; the retry reverts them (a `provision` step each) and
succeeds, and the leftovers are gone.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from ci.models import BuildState, BuildStep, NodeState
from runners.provision import LINUX_MARKER_PATH, WINDOWS_MARKER_PATH
from sim.gerrit_state import GerritState
from sim.lab import SimLab, marker_of
from tests.runners.test_recovery import (
    builds,
    controller_processes,
    enqueue_change,
    nodes,
    sessions_for,
    start_worker,
    stop,
    wait_for,
    write_config,
)

LEFTOVER = "C:\\OpenStack\\Instances\\left-by-build-1.vhdx"


def provisioned_config(lab: SimLab, gerrit: GerritState, tmp_path: Path) -> Path:
    path = write_config(lab, gerrit, tmp_path)
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["parent_hosts"] = lab.parent_host_configs()
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_a_killed_worker_s_vms_are_turned_off_and_reverted_for_the_retry(
        tmp_path: Path) -> None:
    with SimLab(tmp_path / "lab", hyperv_nodes=2, use_sshd=True, provisioned=True) as lab:
        assert lab.parent is not None
        gerrit = GerritState(tmp_path / "gerrit")
        config = provisioned_config(lab, gerrit, tmp_path)
        sessions = sessions_for(tmp_path)
        first_id = enqueue_change(sessions, gerrit)
        (lab.faults_dir / "stack-hang").write_text("", encoding="utf-8")
        root = lab.state_dir / "devstack"
        logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
        hv1 = lab.winrm["hv-1"].model

        def hung() -> bool:
            log = root / "logs" / "stack.sh.log"
            return log.exists() and "wait_for_service" in log.read_text(encoding="utf-8")

        doomed = start_worker(config, "worker-a", logs[0])
        survivor = None
        try:
            wait_for("stack.sh to hang", hung, 180, logs)
            dead_stack = {pid: args for pid, args in controller_processes(root).items()
                          if "sim.devstack_node.stack stack" in args}
            hv1.write_file(LEFTOVER, b"a disk the build left")
            with hv1._lock:
                hv1.services["left-by-build-1"] = "Running"
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=10)
            (lab.faults_dir / "stack-hang").unlink()
            survivor = start_worker(config, "worker-b", logs[1])
            wait_for("the retry to succeed",
                     lambda: any(b.retry_of_id == first_id and b.state == BuildState.SUCCEEDED
                                 for b in builds(sessions)), 300, logs)
        finally:
            if doomed.poll() is None:
                doomed.kill()
            if survivor is not None:
                stop(survivor)

        first, retry = builds(sessions)
        assert first.state == BuildState.ERROR and retry.worker == "worker-b"
        # Unattended: every node is back in service.
        assert {name: (n.state, n.offline_cause, n.build_id)
                for name, n in nodes(sessions).items()} == {
            name: (NodeState.READY, None, None) for name in ("devstack-1", "hv-1", "hv-2")}
        log = logs[1].read_text(errors="replace")
        for name in ("devstack-1", "hv-1", "hv-2"):
            assert (f"node {name} back in service: cleaned and checked after build {first_id}: "
                    f"VM {name} is Off") in log
        # The parent turned both VMs off for the recovery, then reverted them for
        # the retry, and turned them off after it.
        ops = lab.parent.model.operations
        for name in ("devstack-1", "hv-1", "hv-2"):
            mine = [op for op, vm in ops if vm == name]
            assert mine == ["revert", "power-off", "revert", "power-off"], ops
            assert lab.parent.vm(name).state == "Off"
        # What the first build left is gone; the checkpoint's marker is there.
        assert hv1.read_file(LEFTOVER) is None
        assert "left-by-build-1" not in hv1.services
        assert hv1.read_file(WINDOWS_MARKER_PATH) == marker_of("hv-1").encode()
        # Turning the controller off ended the dead build's stack.sh (and the
        # retry's processes went with the retry's power-off).
        assert dead_stack and not set(dead_stack) & set(controller_processes(root))
        assert controller_processes(root) == {}
        assert (root / "home" / LINUX_MARKER_PATH).read_text() == marker_of("devstack-1") + "\n"
        with sessions() as session:
            steps = [(s.name, s.node, s.state) for s in session.scalars(
                select(BuildStep).where(BuildStep.build_id == retry.id).order_by(BuildStep.id))]
        everyone = [("devstack-1",), ("hv-1",), ("hv-2",)]
        assert sorted(steps[:3]) == [("provision", n, "succeeded") for (n,) in everyone]
        assert sorted(s[:2] for s in steps if s[0] == "power-off") == [
            ("power-off", n) for (n,) in everyone]
