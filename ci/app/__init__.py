"""The application shell: the `hyperv-ci` command line and the wiring of its processes.

Nothing imports this package (tests/test_architecture.py checks it): it sits
above the core (`ci/`), `listener/`, `runners/` and `dashboard/`, and only
`ci.app.demo` may import the simulators. See docs/architecture.md.
"""
