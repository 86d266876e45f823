"""`vlmq usage` in-process on the embedded setup's database: an aligned table with a total,
CSV that parses back to the ledger's numbers, one tenant, by day, and a bad window refused
with its reason."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.orm import Session

from shared.cli import main
from shared.db import make_engine
from shared.settings import Settings
from shared.usage import ledger

NOW = datetime.now(timezone.utc)


@pytest.fixture(autouse=True)
def counted(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tenants' usage in the ledger, and the CLI pointed at its database."""
    monkeypatch.setenv("VLMQ_DATABASE_URL", settings.database_url)
    engine = make_engine(settings)
    with Session(engine) as session:
        tally = ledger.Tally()
        tally.add("acme", "qwen2-vl-2b", NOW, accepted=12, succeeded=10, failed=1,
                  images=12, prompt_tokens=12345, image_tokens=9000, completion_tokens=640,
                  engine_seconds=3.25)
        tally.add("acme", "qwen2-vl-7b", NOW - timedelta(days=1), accepted=2, succeeded=2,
                  engine_seconds=1.5)
        tally.add("globex", "qwen2-vl-2b", NOW, accepted=1, cancelled=1, images=1)
        tally.write(session)
        session.commit()
    engine.dispose()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    main(["usage", *argv])
    return capsys.readouterr().out


def test_a_table_aligned_with_a_total(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _run(capsys).splitlines()
    assert lines[0].split()[:4] == ["TENANT", "MODEL", "ACCEPTED", "SUCCEEDED"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["acme", "qwen2-vl-2b", "12"], ["acme", "qwen2-vl-7b", "2"],
        ["globex", "qwen2-vl-2b", "1"], ["TOTAL", "15", "12"]]
    # Right-aligned numbers: every row's last column ends where the header's does.
    assert len({len(line) for line in lines}) == 1
    assert lines[-1].endswith(" 4.8")


def test_csv_for_one_tenant_by_day(capsys: pytest.CaptureFixture[str]) -> None:
    rows = list(csv.DictReader(io.StringIO(_run(capsys, "--csv", "--tenant", "acme",
                                                "--group-by", "day"))))
    assert [(r["tenant"], r["day"], r["accepted"], r["engine_seconds"]) for r in rows] == [
        ("acme", (NOW - timedelta(days=1)).date().isoformat(), "2", "1.500000"),
        ("acme", NOW.date().isoformat(), "12", "3.250000")]
    assert rows[1]["image_tokens"] == "9000"


def test_a_bad_window_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="vlmq usage: start must be before end"):
        main(["usage", "--start", "2025-06-02", "--end", "2025-06-01"])
