"""The simulated devstack controller: stand-ins run as the job runs them (over real sshd)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners.base import CommandTimeout
from runners.ssh import SSHExecutor
from runners.subunit import parse_subunit, summarize
from sim.devstack import DevstackNodePaths, make_devstack_node
from sim.sshd import OpenSSHServer

pytestmark = pytest.mark.sshd

# A Hyper-V image and no qcow2 cirros: the simulated stack.sh refuses an image
# the Hyper-V computes cannot boot (tests/sim/test_devstack_rules.py).
LOCAL_CONF = ("[[local|localrc]]\nADMIN_PASSWORD=pw\ndisable_service n-cpu\nenable_service q-svc\n"
              "DOWNLOAD_DEFAULT_IMAGES=False\n"
              "IMAGE_URLS=https://images.example.org/cirros-0.6.2-x86_64-disk.vhdx\n")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSSHServer]:
    server = OpenSSHServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def executor(sshd: OpenSSHServer) -> Iterator[SSHExecutor]:
    ex = SSHExecutor(sshd.node_config(), kill_grace=1.0)
    yield ex
    ex.close()


@pytest.fixture
def node(tmp_path: Path) -> DevstackNodePaths:
    return make_devstack_node(tmp_path / "node 节点", tmp_path / "lab")


def bash(executor: SSHExecutor, node: DevstackNodePaths, script: str,
         timeout: float = 60) -> tuple[int, str, str]:
    """Run a script the way the job does: uploaded, then `bash <file>`."""
    path = str(node.root / "job.sh")
    prologue = (f"DEVSTACK_DIR={shlex.quote(str(node.devstack_dir))}\n"
                f"TEMPEST_DIR={shlex.quote(str(node.tempest_dir))}\nset -e\n")
    executor.put((prologue + script).encode(), path)
    result = executor.run(["bash", path], timeout=timeout)
    return result.exit_code, result.stdout, result.stderr


def stack(executor: SSHExecutor, node: DevstackNodePaths,
          conf: str = LOCAL_CONF) -> tuple[int, str, str]:
    executor.put(conf.encode(), str(node.devstack_dir / "local.conf"))
    return bash(executor, node, 'cd "$DEVSTACK_DIR" && ./stack.sh\n')


def publish(node: DevstackNodePaths, name: str, compute: str, agent: str) -> None:
    state = {"node": name, "services": {"nova-compute": compute, "neutron-hyperv-agent": agent}}
    (node.lab_dir / "hyperv" / f"{name}.json").write_text(json.dumps(state), encoding="utf-8")


def test_stack_sh_stacks_and_logs(executor: SSHExecutor, node: DevstackNodePaths) -> None:
    code, out, _ = stack(executor, node)
    assert code == 0
    assert "stack.sh completed" in out and "私有网络" in out
    assert node.stacked
    logs = {p.name for p in node.logs_dir.iterdir()}
    assert {"stack.sh.log", "n-api.log", "q-svc.log", "local.conf.txt"} <= logs
    assert "stack.sh completed" in (node.logs_dir / "stack.sh.log").read_text(encoding="utf-8")
    code, _, _ = bash(executor, node, 'cd "$DEVSTACK_DIR" && ./unstack.sh\n')
    assert code == 0 and not node.stacked


@pytest.mark.parametrize(("conf", "message"), [
    ("ADMIN_PASSWORD=pw\n", "no [[local|localrc]] section"),
    ("[[local|localrc]]\nenable_service n-cpu\n", "n-cpu is enabled"),
    ("[[local|localrc]]\nENABLED_SERVICES+=,n-cpu,q-svc\n", "n-cpu is enabled"),
])
def test_stack_sh_rejects_a_bad_local_conf(executor: SSHExecutor, node: DevstackNodePaths,
                                           conf: str, message: str) -> None:
    code, _, err = stack(executor, node, conf)
    assert code != 0 and message in err
    assert not node.stacked


def test_stack_fault_fails_with_its_text(executor: SSHExecutor, node: DevstackNodePaths) -> None:
    fault = node.lab_dir / "faults" / "stack"
    fault.write_text("Neutron: réseau indisponible\n", encoding="utf-8")
    code, out, err = stack(executor, node)
    assert code == 1 and err == "Neutron: réseau indisponible\n"
    assert "Starting" in out and not node.stacked


def test_stack_hang_is_stopped_by_the_timeout(executor: SSHExecutor,
                                              node: DevstackNodePaths) -> None:
    (node.lab_dir / "faults" / "stack-hang").touch()
    executor.put(LOCAL_CONF.encode(), str(node.devstack_dir / "local.conf"))
    with pytest.raises(CommandTimeout):
        executor.run(["./stack.sh"], timeout=1.5, cwd=str(node.devstack_dir))
    assert not node.stacked


def test_openstack_lists_follow_the_lab_state(executor: SSHExecutor,
                                              node: DevstackNodePaths) -> None:
    assert stack(executor, node)[0] == 0
    publish(node, "hv-1", "Running", "Running")
    publish(node, "hv-2", "Stopped", "Running")
    (node.lab_dir / "hyperv" / "broken.json").write_text("{not json", encoding="utf-8")
    script = ('source "$DEVSTACK_DIR/openrc" admin admin\n'
              "openstack compute service list --service nova-compute -f json\n"
              "echo '---'\nopenstack network agent list -f json\n")
    code, out, err = bash(executor, node, script)
    assert code == 0, err
    services_text, agents_text = out.split("---\n")
    services = json.loads(services_text)
    assert [(s["Host"], s["Binary"], s["State"], s["Status"]) for s in services] == [
        ("hv-1", "nova-compute", "up", "enabled"), ("hv-2", "nova-compute", "down", "enabled")]
    assert set(services[0]) == {"ID", "Binary", "Host", "Zone", "Status", "State", "Updated At"}
    agents = [a for a in json.loads(agents_text) if a["Agent Type"] == "HyperV agent"]
    assert [(a["Host"], a["Alive"], a["Binary"]) for a in agents] == [
        ("hv-1", True, "neutron-hyperv-agent"), ("hv-2", True, "neutron-hyperv-agent")]
    publish(node, "hv-2", "Running", "Stopped")
    _, out, _ = bash(executor, node, script)
    agents = [a for a in json.loads(out.split("---\n")[1]) if a["Agent Type"] == "HyperV agent"]
    assert [a["Alive"] for a in agents] == [True, False]


def test_rabbitmq_tools_are_the_nodes_own(executor: SSHExecutor, node: DevstackNodePaths) -> None:
    """Log collection asks `rabbitmq-diagnostics status` first: the controller answers
    it, even with the system directories on PATH (a host's own RabbitMQ tools, when
    installed, are not the simulated controller's)."""
    script = ('source "$DEVSTACK_DIR/openrc" admin admin\n'
              'PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"\n'
              "for tool in rabbitmq-diagnostics rabbitmqctl; do\n"
              '    command -v "$tool"; "$tool" status\ndone\n')
    code, out, err = bash(executor, node, script)
    assert code == 0, err
    assert out.count(str(node.bin_dir) + "/rabbit") == 2
    assert out.count("RabbitMQ version: 3.9.13") == 2


def test_openstack_needs_openrc_and_a_stack(executor: SSHExecutor, node: DevstackNodePaths) -> None:
    code, _, err = bash(executor, node, '"$DEVSTACK_DIR/../bin/openstack" network agent list\n')
    assert code == 1 and "auth-url" in err
    code, _, err = bash(executor, node, 'source "$DEVSTACK_DIR/openrc" admin admin\n'
                        "openstack network agent list\n")
    assert code == 1 and "Connection refused" in err


def test_tempest_run_streams_real_subunit(executor: SSHExecutor, node: DevstackNodePaths) -> None:
    assert stack(executor, node)[0] == 0
    (node.lab_dir / "faults" / "tempest-fail").write_text("test_resize_server\n", encoding="utf-8")
    (node.root / "exclude.txt").write_text("test_network_basic_ops\n", encoding="utf-8")
    # tempest is where devstack installs it (its tox venv), not on openrc's PATH.
    script = ('source "$DEVSTACK_DIR/openrc" admin admin\ncd "$TEMPEST_DIR"\n'
              "T=.tox/tempest/bin/tempest\n"
              "$T run --subunit --concurrency 2 --regex '^tempest\\.' "
              "--exclude-list ../exclude.txt > ../parallel.subunit\n"
              "$T run --subunit --serial --regex '(\\.test_resize|\\.test_shelve)' "
              "> ../serial.subunit\n")
    code, _, err = bash(executor, node, script)
    assert code == 0, err
    parallel = parse_subunit((node.root / "parallel.subunit").read_bytes())
    serial = parse_subunit((node.root / "serial.subunit").read_bytes())
    assert not any("test_network_basic_ops" in r.test_id for r in parallel)
    assert len(parallel) == 14
    assert sorted(r.test_id.split("[")[0].rsplit(".", 1)[1] for r in serial) == [
        "test_resize_server_confirm", "test_shelve_instance", "test_shelve_unshelve_server"]
    summary = summarize(serial)
    assert summary.counts == {"success": 2, "fail": 1} and not summary.passed
    assert "running:" in (node.logs_dir / "tempest.log").read_text(encoding="utf-8")


def test_tempest_needs_a_stack(executor: SSHExecutor, node: DevstackNodePaths) -> None:
    assert stack(executor, node)[0] == 0
    assert bash(executor, node, '"$DEVSTACK_DIR/unstack.sh"\n')[0] == 0
    code, _, err = bash(executor, node, 'source "$DEVSTACK_DIR/openrc"\ncd "$TEMPEST_DIR"\n'
                        ".tox/tempest/bin/tempest run --subunit > /dev/null\n")
    assert code == 1 and "stack.sh" in err
