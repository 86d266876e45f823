"""Routes parse, call a service and serialise; they hold no database session. Transactions
are opened in the services with `sessionmaker.begin()`, which commits on success and rolls
back on an error, so nothing in api/ commits by hand.

An AST scan of api/routes/ finds a session or connection used there: a call of `.commit()`,
`.rollback()`, `.begin()`, `.execute()` and the like, a sessionmaker called through the
dependencies (`deps.sessions()`, `deps.reads()`, `deps.autocommit()`), or an import of
SQLAlchemy. A scan of the whole of api/ finds a hand-written `.commit()`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROUTES = ROOT / "api" / "routes"
API = ROOT / "api"

# Methods of a Session or Connection: a route calling one holds a session.
_SESSION_METHODS = {"commit", "rollback", "begin", "begin_nested", "execute", "scalar",
                    "scalars", "flush", "connect"}
# The sessionmakers and engine on ApiDeps (api/deps.py): a route hands them to a service,
# it never calls them itself.
_DEPS_FACTORIES = {"sessions", "reads", "autocommit", "engine"}


def session_use(source: str) -> list[tuple[int, str]]:
    """(line, what) for every use of a session, connection or sessionmaker in `source`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name in _SESSION_METHODS:
                found.append((node.lineno, f".{name}()"))
            elif name in _DEPS_FACTORIES:
                found.append((node.lineno, f"{ast.unparse(node.func)}()"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, f"import {a.name}") for a in node.names
                         if a.name.split(".")[0] == "sqlalchemy")
    return found


def hand_commits(source: str) -> list[int]:
    """The lines calling `.commit()`."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "commit"]


def test_the_scans_find_each_kind_of_use() -> None:
    source = '''
from sqlalchemy.orm import Session
import sqlalchemy
with deps.sessions() as session:
    session.commit()
with deps.reads() as session:
    session.execute(stmt)
conn = deps.autocommit()
with deps.sessions.begin() as session:
    session.scalars(stmt)
deps.engine.connect()
'''
    found = [what for _, what in session_use(source)]
    assert found.count(".commit()") == 1
    assert ".execute()" in found and ".scalars()" in found and ".begin()" in found
    assert ".connect()" in found
    for call in ("deps.sessions()", "deps.reads()", "deps.autocommit()"):
        assert call in found
    assert "from sqlalchemy.orm import ..." in found and "import sqlalchemy" in found
    assert hand_commits(source) == [5]
    # Handing a sessionmaker to a service is what a route should do.
    assert session_use("view = batches.read(deps.reads, batch_id, tenant)") == []


def test_routes_hold_no_session() -> None:
    modules = sorted(ROUTES.glob("*.py"))
    assert len(modules) > 5  # the scan does see the route modules
    wrong = [f"{path.relative_to(ROOT)}:{line}: {what}"
             for path in modules
             for line, what in session_use(path.read_text())]
    assert not wrong, ("routes call a service (api/services/) for database work:\n"
                       + "\n".join(wrong))


def test_nothing_in_api_commits_by_hand() -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line}"
             for path in sorted(API.rglob("*.py"))
             for line in hand_commits(path.read_text())]
    assert not wrong, ("write transactions use `with sessions.begin() as session:`, which "
                       "commits on success and rolls back on an error:\n" + "\n".join(wrong))
