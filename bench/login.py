"""What a dashboard login costs, and that its failures cost the same.

    python -m bench.login [--rounds 20] [--results FILE]

Through the real app (SQLite in a temporary directory, the product's Argon2id
parameters): a right password, a wrong password and an unknown name, each
`--rounds` times as `ci.accounts.verify`, and the whole `POST /login` request.
A failure that answered much faster than a success would tell an attacker
which names exist; the three verify figures should be within noise.

Records dashboard.login_verify_ok_ms_p50, dashboard.login_verify_wrong_ms_p50,
dashboard.login_verify_unknown_ms_p50 (and their _p95) and
dashboard.login_request_ms_p50.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.results import RESULTS, record

NAME = "bench-operator"
PASSWORD = "a bench password, long enough"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return round(statistics.median(ordered) * 1000, 1), round(p95 * 1000, 1)


def _timed(rounds: int, action: Callable[[], object]) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return samples


def run(rounds: int, results: Path) -> dict[str, float]:
    from ci import accounts
    from ci.config import parse_config
    from ci.db import ensure_schema, make_engine, make_sessionmaker
    from dashboard import create_app

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = make_engine(f"sqlite:///{root / 'bench.db'}")
        ensure_schema(engine)
        sessions = make_sessionmaker(engine)
        with sessions() as s, s.begin():
            accounts.create(s, NAME, PASSWORD)
        figures: dict[str, float] = {}
        with sessions() as s:
            for label, name, password in [("ok", NAME, PASSWORD),
                                          ("wrong", NAME, PASSWORD + "x"),
                                          ("unknown", "nobody-here", PASSWORD)]:
                p50, p95 = _ms(_timed(rounds, lambda n=name, p=password:
                                      accounts.verify(s, n, p)))
                figures[f"dashboard.login_verify_{label}_ms_p50"] = p50
                figures[f"dashboard.login_verify_{label}_ms_p95"] = p95
        config = parse_config({
            "database": {"url": f"sqlite:///{root / 'bench.db'}"},
            "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": str(root / "k"),
                       "known_hosts": str(root / "kh")},
            "projects": [{"name": "p", "jobs": ["j"]}],
            "jobs": {"j": {"type": "local", "command": ["true"]}},
            "dashboard": {"secret_key_file": str(root / "key")},
        })
        client = create_app(config, sessions=sessions).test_client()

        def login() -> None:
            match = CSRF.search(client.get("/login").get_data(as_text=True))
            assert match
            response = client.post("/login", data={"csrf_token": match.group(1),
                                                   "name": NAME, "password": PASSWORD})
            assert response.status_code == 303, response.status_code

        figures["dashboard.login_request_ms_p50"] = _ms(_timed(rounds, login))[0]
        engine.dispose()
    record(figures, path=results)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    for key, value in run(args.rounds, args.results).items():
        print(f"{key} = {value}")


if __name__ == "__main__":
    main()
