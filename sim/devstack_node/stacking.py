"""The phases of the simulated stack.sh that follow devstack's rules (see
sim/devstack_node/rules.py for each rule and its upstream source).

`prepare` runs where devstack loads local.conf and fetches plugins,
`start_neutron` where lib/neutron starts neutron-server, and
`configure_tempest` where lib/tempest writes tempest.conf and local.conf's
test-config section is merged in. A rule that devstack enforces ends
stack.sh with devstack's message on stderr, exit 1.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sim.devstack_node import Node, die, log
from sim.devstack_node.localrc import Localrc, ini_values, parse_localrc, sections
from sim.devstack_node.rules import (
    HYPERV_DISK_FORMATS,
    fetch_plugin,
    images,
    missing_mechanism_drivers,
    skipped_extras,
    tempest_image_refs,
    unknown_variables,
)

Say = Callable[[str], None]
_NS = uuid.UUID("0c5b2f8e-7d3a-4a57-9c1e-2b6f7e9d1a40")


@dataclass
class Stacking:
    settings: Localrc
    installed: set[str] = field(default_factory=set)


def prepare(node: Node, localrc_lines: list[str], say: Say) -> Stacking:
    """Read the settings, report what devstack ignores, fetch the plugins."""
    settings = parse_localrc(localrc_lines)
    for error in settings.errors:
        die(f"[ERROR] {node.devstack_dir}/functions-common:1741 {error}")
    for name in unknown_variables(settings.variables):
        # Not devstack's (it ignores such a name silently): the simulated lab
        # reports it, so a misspelt or retired setting is seen.
        say(f"[WARNING] local.conf: {name} is read by neither devstack nor an enabled plugin")
    for line in skipped_extras(node.devstack_dir):
        say(line)
    state = Stacking(settings)
    if settings.plugins:
        say("Fetching DevStack plugins")
    for plugin in settings.plugins:
        result = fetch_plugin(plugin, node.root, node.devstack_dir)
        for line in result.output:
            say(line)
        if result.error:
            die(result.error)
        if result.has_plugin_sh:
            # networking-hyperv's plugin.sh: setup_develop in stack/install.
            state.installed.add(plugin.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))
            state.installed.add(plugin.name)
            say(f"Installing {plugin.name}.")
    return state


def start_neutron(node: Node, state: Stacking, say: Say) -> None:
    """neutron-server exits when a configured mechanism driver is not installed;
    lib/neutron's start_neutron_service_and_check then dies after test_with_retry
    ("Neutron did not start", functions-common)."""
    missing = missing_mechanism_drivers(state.settings.variables, state.installed)
    if not missing:
        return
    message = f"The following mechanism drivers were not found: {set(missing)}"
    log(node.logs_dir / "q-svc.log", f"CRITICAL neutron.plugins.ml2.managers [-] {message}")
    log(node.logs_dir / "q-svc.log", f"CRITICAL neutron [-] Unhandled error: SystemExit: {message}")
    say("Waiting for Neutron to start...")
    die(f"[ERROR] {node.devstack_dir}/functions-common:2365 Neutron did not start")


def configure_tempest(node: Node, state: Stacking, conf_text: str, say: Say) -> None:
    """Write etc/tempest.conf as lib/tempest would (image_ref from the images
    stack.sh uploaded), merge local.conf's test-config section over it, then
    refuse images the Hyper-V computes cannot boot."""
    found, default_name = images(state.settings.variables)
    for image in found:
        say(f"Uploading image {image.name} ({image.disk_format}) from {image.url}")
    values: dict[tuple[str, str], str] = {}
    refs = tempest_image_refs(found, default_name)
    if refs is not None:
        values[("compute", "image_ref")] = str(uuid.uuid5(_NS, refs[0].name))
        values[("compute", "image_ref_alt")] = str(uuid.uuid5(_NS, refs[1].name))
    for (phase, _file), lines in sections(conf_text).items():
        if phase == "test-config":
            values.update(ini_values(lines))
    _write_ini(node, values)
    if refs is None:
        return
    by_id = {str(uuid.uuid5(_NS, i.name)): i for i in found}
    for option in ("image_ref", "image_ref_alt"):
        image = by_id.get(values.get(("compute", option), ""))
        if image is not None and image.disk_format not in HYPERV_DISK_FORMATS:
            # The simulated lab's check, not devstack's: on a real lab every
            # boot would fail in compute-hyperv (block_device_manager:
            # nova's InvalidImageFormat) and the build would vote -1 on an
            # innocent change. Stopping here makes the mistake a CI error.
            die(f"[ERROR] simulated lab: tempest's {option} is {image.name} "
                f"({image.disk_format}), which the Hyper-V computes cannot boot: "
                f"Invalid image format '{image.disk_format}'")


def _write_ini(node: Node, values: dict[tuple[str, str], str]) -> None:
    by_section: dict[str, list[str]] = {}
    for (section, key), value in values.items():
        by_section.setdefault(section, []).append(f"{key} = {value}")
    text = "".join(f"[{s}]\n" + "\n".join(lines) + "\n\n" for s, lines in by_section.items())
    path = node.tempest_dir / "etc" / "tempest.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
