from pathlib import Path

import pytest

from bench.results import record


def test_record_merges_keys_of_separate_benchmarks(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    record({"listener.bare_eps": 1000.5}, path=path)
    merged = record({"claims.double": 0, "listener.bare_eps": 900}, path=path)
    assert merged == {"claims.double": 0, "listener.bare_eps": 900}
    assert path.read_text().startswith('{\n  "claims.double": 0,')


@pytest.mark.parametrize("figures", [{"nodot": 1}, {"a.b": float("nan")}, {"a.b": True},
                                     {"a.b": "12"}])
def test_record_refuses_what_a_reader_could_not_use(tmp_path: Path, figures: dict) -> None:
    path = tmp_path / "results.json"
    with pytest.raises(ValueError):
        record(figures, path=path)
    assert not path.exists()
