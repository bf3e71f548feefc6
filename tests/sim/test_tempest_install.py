"""tempest where devstack puts it: the simulated stack.sh's rule, and tempest.sh against it."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci.config import DevstackHypervJob
from runners.job_values import tempest_parallel_exclude_file, tempest_serial_regex
from runners.render import make_environment
from runners.ssh import SSHExecutor
from runners.subunit import parse_subunit, summarize
from sim.devstack import DevstackNodePaths, make_devstack_node
from sim.devstack_node import load_node
from sim.devstack_node.tempest_install import has_global_venv, places
from sim.sshd import OpenSSHServer

pytestmark = pytest.mark.sshd

LOCAL_CONF = ("[[local|localrc]]\nADMIN_PASSWORD=pw\ndisable_service n-cpu\n"
              "DOWNLOAD_DEFAULT_IMAGES=False\n")


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


def make_node(tmp_path: Path, branch: str) -> DevstackNodePaths:
    return make_devstack_node(tmp_path / "opt stack 节点", tmp_path / "lab", devstack_branch=branch)


def where(tmp_path: Path, branch: str, conf: str = "") -> set[str]:
    """Where a stack on `branch` with these localrc lines installs tempest, relative to root."""
    paths = make_node(tmp_path, branch)
    found = places(load_node(str(paths.root)), conf.splitlines(), branch).paths
    return {p.relative_to(paths.root).as_posix() if p.is_relative_to(paths.root) else str(p)
            for p in found}


TOX = "tempest/.tox/tempest/bin/tempest"
VENV = "data/venv/bin/tempest"


def test_global_venv_exists_from_2023_2() -> None:
    assert has_global_venv("master") and has_global_venv("stable/2025.1")
    assert has_global_venv("unmaintained/2024.1") and has_global_venv("stable/2023.2")
    assert not has_global_venv("unmaintained/2023.1")
    assert not has_global_venv("unmaintained/zed") and not has_global_venv("stable/yoga")


def test_where_devstack_installs_tempest_per_branch(tmp_path: Path) -> None:
    # Every branch: the tox venv. master (INSTALL_TEMPEST=True) also the global venv.
    assert where(tmp_path, "master") == {TOX, VENV}
    assert where(tmp_path, "stable/2025.1") == {TOX}
    assert where(tmp_path, "unmaintained/2023.1") == {TOX}
    # GLOBAL_VENV=False: setup_develop installs system-wide (the stand-in bin/ on PATH).
    assert where(tmp_path, "master", "GLOBAL_VENV=False") == {TOX, "bin/tempest"}
    assert where(tmp_path, "master", "GLOBAL_VENV=no\nGLOBAL_VENV=True") == {TOX, VENV}
    assert where(tmp_path, "master", "INSTALL_TEMPEST=False") == {TOX}
    assert where(tmp_path, "stable/2025.1", "INSTALL_TEMPEST=True") == {TOX, VENV}
    assert where(tmp_path, "unmaintained/2023.1", "INSTALL_TEMPEST=True") == {TOX, "bin/tempest"}
    assert where(tmp_path, "master", 'DATA_DIR="$DEST/d 数据"') == {TOX, "d 数据/venv/bin/tempest"}
    assert where(tmp_path, "master", "DEVSTACK_VENV=/srv/venv") == {TOX, "/srv/venv/bin/tempest"}
    assert where(tmp_path, "master", "disable_service tempest") == set()
    assert where(tmp_path, "master", "disable_service tempest\nenable_service tempest") == {
        TOX, VENV}
    assert where(tmp_path, "master", "ENABLED_SERVICES=key,n-api") == set()


def bash(executor: SSHExecutor, node: DevstackNodePaths, script: str,
         timeout: float = 60) -> tuple[int, str, str]:
    path = str(node.root / "job.sh")
    prologue = f"DEVSTACK_DIR={shlex.quote(str(node.devstack_dir))}\nset -e\n"
    executor.put((prologue + script).encode(), path)
    result = executor.run(["bash", path], timeout=timeout)
    return result.exit_code, result.stdout, result.stderr


def stack(executor: SSHExecutor, node: DevstackNodePaths, conf: str = LOCAL_CONF) -> None:
    executor.put(conf.encode(), str(node.devstack_dir / "local.conf"))
    code, _, err = bash(executor, node, 'cd "$DEVSTACK_DIR" && ./stack.sh >/dev/null\n')
    assert code == 0, err


def test_tempest_is_not_on_openrc_path_after_stack(executor: SSHExecutor,
                                                   tmp_path: Path) -> None:
    node = make_node(tmp_path, "master")
    stack(executor, node)
    code, out, _ = bash(executor, node, 'source "$DEVSTACK_DIR/openrc" admin admin\n'
                        "command -v openstack\ncommand -v tempest || echo no-tempest\n")
    assert code == 0 and out.splitlines()[-1] == "no-tempest", out
    assert (node.tempest_dir / ".tox" / "tempest" / "bin" / "tempest").exists()
    assert (node.root / "data" / "venv" / "bin" / "tempest").exists()


def tempest_sh(node: DevstackNodePaths, workspace: Path) -> str:
    """The job's own tempest.sh, rendered for this node (only network tests: quick)."""
    job = DevstackHypervJob.model_validate({
        "type": "devstack-hyperv", "image": "/opt/stack/images/cirros.vhdx",
        "devstack_dir": str(node.devstack_dir),
        "tempest_dir": str(node.tempest_dir), "workspace": str(workspace),
        "tempest": {"include_regex": r"^tempest\.api\.network\.", "concurrency": 2}})
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "tempest-exclude-parallel.txt").write_text(
        tempest_parallel_exclude_file(job), encoding="utf-8")
    (workspace / "tempest-exclude.txt").write_text("", encoding="utf-8")
    return make_environment().get_template("tempest.sh.j2").render(
        job=job, workspace=str(workspace), dest=str(node.root),
        tempest_serial_regex=tempest_serial_regex(job))


def run_tempest_sh(executor: SSHExecutor, node: DevstackNodePaths,
                   workspace: Path) -> tuple[int, str, str]:
    script = workspace / "tempest.sh"
    executor.put(tempest_sh(node, workspace).encode(), str(script))
    result = executor.run(["bash", str(script)], timeout=120)
    return result.exit_code, result.stdout, result.stderr


def test_tempest_sh_runs_the_tox_venv_tempest(executor: SSHExecutor, tmp_path: Path) -> None:
    node = make_node(tmp_path, "unmaintained/2023.1")
    stack(executor, node)
    workspace = node.root / "workspace"
    code, out, err = run_tempest_sh(executor, node, workspace)
    assert code == 0, err
    assert f"tempest: {node.tempest_dir}/.tox/tempest/bin/tempest" in out
    results = parse_subunit((workspace / "tempest" / "tempest.subunit").read_bytes())
    assert summarize(results).passed


def test_tempest_sh_runs_the_global_venv_tempest(executor: SSHExecutor, tmp_path: Path) -> None:
    node = make_node(tmp_path, "master")
    stack(executor, node)
    # A controller whose tox venv is gone still has the global venv's tempest (master).
    shutil.rmtree(node.tempest_dir / ".tox")
    workspace = node.root / "workspace"
    code, out, err = run_tempest_sh(executor, node, workspace)
    assert code == 0, err
    assert f"tempest: {node.root}/data/venv/bin/tempest" in out
    results = parse_subunit((workspace / "tempest" / "tempest.subunit").read_bytes())
    assert summarize(results).passed


def test_tempest_sh_fails_loudly_when_tempest_is_nowhere(executor: SSHExecutor,
                                                         tmp_path: Path) -> None:
    node = make_node(tmp_path, "master")
    # GLOBAL_VENV=False: devstack's setup_develop put a tempest on PATH, the tox venv
    # is gone: tempest.sh must not take the one on PATH.
    stack(executor, node, LOCAL_CONF + "GLOBAL_VENV=False\n")
    assert (node.bin_dir / "tempest").exists()
    shutil.rmtree(node.tempest_dir / ".tox")
    workspace = node.root / "workspace"
    (workspace / "tempest").mkdir(parents=True)
    (workspace / "tempest" / "tempest.subunit").write_bytes(b"stale")
    code, _, err = run_tempest_sh(executor, node, workspace)
    assert code == 3
    assert "tempest is not installed where devstack puts it" in err
    assert not (workspace / "tempest" / "tempest.subunit").exists()  # no stale stream either


def test_flaky_fault_fails_the_first_run_of_each_build(executor: SSHExecutor,
                                                       tmp_path: Path) -> None:
    node = make_node(tmp_path, "master")
    (node.lab_dir / "faults" / "tempest-flaky").write_text("test_list_networks\n",
                                                          encoding="utf-8")

    def statuses() -> dict[str, str]:
        code, _, err = bash(executor, node, 'source "$DEVSTACK_DIR/openrc" admin admin\n'
                            f"cd {shlex.quote(str(node.tempest_dir))}\n"
                            ".tox/tempest/bin/tempest run --subunit --serial "
                            "--regex 'test_networks' > ../run.subunit\n")
        assert code == 0, err
        results = parse_subunit((node.root / "run.subunit").read_bytes())
        return {r.test_id.split("[")[0].rsplit(".", 1)[1]: r.status for r in results}

    stack(executor, node)
    first = statuses()
    assert first["test_list_networks"] == "fail"
    assert all(s == "success" for name, s in first.items() if name != "test_list_networks")
    assert statuses()["test_list_networks"] == "success"  # the re-run passes
    assert statuses()["test_list_networks"] == "success"
    stack(executor, node)  # the next build starts fresh
    assert statuses()["test_list_networks"] == "fail"
