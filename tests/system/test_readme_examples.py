"""The README's shell and Python examples run, in order, against a stack started as the
README says (`vlmq up`), so a snippet that fails when pasted fails here.

Each ```bash block runs with `bash -euo pipefail` in a project folder laid out like the
repository, as if typed into one terminal: variables a block sets (VLMQ_API_KEY, AUTH, KEY,
JOB…) are there for the next ones. Each ```python block runs with the venv's python and
that terminal's exported variables. A block that cannot run on a test machine carries
`<!-- readme-test: skip (why) -->` on the line directly before its fence; any other block in
a language this test does not run fails it, so a new snippet is tested by default.

The stack runs the echo engine (`VLMQ_ENGINE=echo`): no snippet depends on generated text,
and a vLLM engine would spend most of a minute starting.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.services import free_port
from tests.helpers.up import make_project, plain_env, start_up, stop_up

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
VENV_BIN = REPO / ".venv" / "bin"

SHELL = {"bash", "sh", "shell"}
PYTHON = {"python", "py"}
# Blocks that show output or data, which nobody pastes into a terminal.
OUTPUT_ONLY = {"", "json", "jsonl", "text", "csv"}

FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")
SKIP = re.compile(r"^skip \((?P<reason>[^()]*\S[^()]*)\)$")
# A variable a block assigns (`NAME=…` or `export NAME=…` at the start of a line), carried to
# the following blocks as a terminal would keep it.
ASSIGNED = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=", re.M)
# The API's error envelope. curl -s exits 0 on a 4xx, so a refused request is only visible
# in the output; it counts as a failure unless the block itself names the code it expects.
API_ERROR = re.compile(r'"error":\s*\{\s*"code":\s*"(?P<code>[a-z_]+)"')

# Placeholders that read better than the shell needed to compute them, with what they stand
# for. The key id is the 12 hex characters after `vlmq_` in the key the block just made.
PLACEHOLDERS = {"3f9c0a1b2c3d": '"${KEY:5:12}"'}

BLOCK_TIMEOUT_S = 60


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # the reason given in the README, when marked

    @property
    def first_line(self) -> str:
        return next((ln for ln in self.code.splitlines() if ln.strip()), "")

    def where(self) -> str:
        return f"README.md:{self.line} ```{self.lang}  {self.first_line}"


def _skip_reason(line: str, number: int) -> str | None:
    marker = MARKER.match(line)
    if not marker:
        return None
    skip = SKIP.match(marker.group("body"))
    if not skip:
        raise ValueError(f"README.md:{number}: write `<!-- readme-test: skip (why) -->`")
    return skip.group("reason")


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block in order, with the skip reason of a marker directly before it. A
    marker that is malformed or not directly before a fence is an error, so none goes stale
    unnoticed."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if _skip_reason(lines[i], i + 1) and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
            raise ValueError(f"README.md:{i + 1}: a readme-test marker must be directly "
                             "before a fence")
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: unclosed fence")
        reason = _skip_reason(lines[i - 1], i) if i else None
        blocks.append(Block(i + 1, fence.group("lang").lower(),
                            "\n".join(lines[i + 1:end]) + "\n", reason))
        i = end + 1
    return blocks


def runnable(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.skip is None and (b.lang in SHELL or b.lang in PYTHON)]


def test_every_example_is_run_or_marked_with_a_reason() -> None:
    blocks = readme_blocks(README.read_text())
    unknown = [b.where() for b in blocks
               if b.skip is None and b.lang not in SHELL | PYTHON | OUTPUT_ONLY]
    assert not unknown, ("blocks in a language this test does not run; mark them "
                         f"`<!-- readme-test: skip (why) -->` or make them bash/python: {unknown}")
    assert runnable(blocks), "no README example runs"


@dataclass
class Terminal:
    """One terminal session in the project folder: bash blocks run there in turn and leave
    their variables for the next, as a reader pasting them one after another would."""

    project: Path
    port: int
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return self.project / ".readme-test-state.sh"

    def prepare(self, block: Block) -> str:
        code = block.code.replace("localhost:8000", f"localhost:{self.port}")
        if block.lang in SHELL:
            for placeholder, value in PLACEHOLDERS.items():
                code = code.replace(placeholder, value)
        return code

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        code = self.prepare(block)
        if block.lang in SHELL:
            names = " ".join(dict.fromkeys(ASSIGNED.findall(code)))
            keep = f'\ndeclare -p {names} >> "{self.state}" 2>/dev/null || true\n' if names else ""
            script = f'source "{self.state}"\n{code}{keep}'
        else:
            source = self.project / f".readme-test-{block.line}.py"
            source.write_text(code)
            script = f'source "{self.state}"\nexec python "{source}"\n'
        # Its own process group, so whatever a block leaves running is stopped with it.
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=self.project,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n(timed out after {BLOCK_TIMEOUT_S}s)\n"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def terminal(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Terminal]:
    project = make_project(tmp_path_factory.mktemp("readme"), tiny_model)
    (project / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    # The README activates the repository's venv by its relative path.
    (project / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)
    port = free_port()
    proc, _ = start_up(project, port)
    # VLMQ_API_PORT tells `vlmq backfill` where the local server is, as 8000 does by default.
    env = plain_env(api_port=str(port))
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    term = Terminal(project, port, env)
    term.state.write_text("")
    try:
        yield term
    finally:
        stop_up(proc)


def test_readme_examples_run_against_vlmq_up(terminal: Terminal) -> None:
    failures: list[str] = []
    for block in runnable(readme_blocks(README.read_text())):
        done = terminal.run(block)
        output = done.stdout + done.stderr
        refused = [m.group("code") for m in API_ERROR.finditer(output)
                   if m.group("code") not in block.code]
        if done.returncode != 0 or refused:
            why = f"exit {done.returncode}" if done.returncode else f"API refused: {refused}"
            failures.append(f"{block.where()}\n  {why}\n{output}")
    assert not failures, "\n\n".join(failures)
