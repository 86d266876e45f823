"""Status is written only by the transitions modules (shared/{jobs,batches,webhooks}/
transitions.py), whose verbs each name the source states their table allows.

An AST scan of api/, worker/ and shared/ finds any other write: `.values(status=...)` or
`.update(status=...)`, `status=` in `dict(...)` rows and model constructors, `.status = `
and `row["status"] = ` assignments, `setattr(x, "status", ...)`, and raw SQL whose SET
clause names status. What must stay elsewhere goes in ALLOWED, with the reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("api", "worker", "shared")
TRANSITIONS = {
    "shared/jobs/transitions.py",
    "shared/batches/transitions.py",
    "shared/webhooks/transitions.py",
}
# path -> why it may write a status outside the transitions modules (migrations live in
# migrations/, which is not scanned: a schema change may rewrite rows as it must).
ALLOWED: dict[str, str] = {
    "shared/client/vlmq/client/types.py": "the client's error keeps the response's HTTP status",
}

_ROW_BUILDERS = {"dict", "Job", "Batch", "WebhookDelivery"}
_SET_CLAUSE = re.compile(r"\bSET\b(.*?)(?:\bWHERE\b|\bFROM\b|\bRETURNING\b|$)",
                         re.IGNORECASE | re.DOTALL)
_STATUS_ASSIGNED = re.compile(r"\bstatus\s*=", re.IGNORECASE)


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def status_writes(source: str) -> list[tuple[int, str]]:
    """(line, what) for every status write in `source`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if any(k.arg == "status" for k in node.keywords):
                if name in ("values", "update") and isinstance(node.func, ast.Attribute):
                    found.append((node.lineno, f".{name}(status=...)"))
                elif name in _ROW_BUILDERS:
                    found.append((node.lineno, f"{name}(status=...)"))
            if (name == "setattr" and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value == "status"):
                found.append((node.lineno, 'setattr(..., "status", ...)'))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for t in ast.walk(target):
                    if isinstance(t, ast.Attribute) and t.attr == "status":
                        found.append((node.lineno, ".status = ..."))
                    elif (isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant)
                          and t.slice.value == "status"):
                        found.append((node.lineno, '["status"] = ...'))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for match in _SET_CLAUSE.finditer(node.value):
                if re.search(r"\bUPDATE\b", node.value, re.IGNORECASE) and \
                        _STATUS_ASSIGNED.search(match.group(1)):
                    found.append((node.lineno, "raw SQL SET status"))
    return found


def test_the_scan_finds_each_kind_of_write() -> None:
    source = '''
stmt = update(Job).values(status="x")
row.update(status="failed")
row = dict(id=1, status="queued")
job = Job(status="queued")
job.status = "running"
row["status"] = "failed"
setattr(job, "status", "running")
SQL = "UPDATE jobs SET finished_at = now(), status = 'x' WHERE id = :id"
'''
    assert len(status_writes(source)) == 8
    harmless = '''
select(Job).where(Job.status == "queued")
JobOut(status=job.status)
SQL = "UPDATE jobs SET lease_expires_at = NULL WHERE status = 'running'"
'''
    assert status_writes(harmless) == []


def test_status_is_written_only_by_the_transitions_modules() -> None:
    offenders = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in TRANSITIONS or rel in ALLOWED:
                continue
            for line, what in status_writes(path.read_text()):
                offenders.append(f"{rel}:{line}: {what}")
    assert offenders == [], "status written outside the transitions modules:\n" + "\n".join(
        offenders)


def test_the_allowlist_names_files_that_exist() -> None:
    assert all((ROOT / rel).is_file() for rel in ALLOWED)
