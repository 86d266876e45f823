"""Where the embedded setup keeps its state: one folder, the vlmq home.

`VLMQ_HOME` when set; otherwise the nearest `.vlmq` folder at or above the working folder
(as git finds `.git`), so every command run anywhere inside a project finds that project's
database, broker folder, objects, models and logs; otherwise `./.vlmq`, created by the
first command that writes there (`vlmq migrate`, `vlmq up`, `vlmq demo`).
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_VARIABLE = "VLMQ_HOME"
FOLDER = ".vlmq"


def vlmq_home() -> Path:
    chosen = os.environ.get(HOME_VARIABLE)
    if chosen:
        return Path(chosen).expanduser().absolute()
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / FOLDER).is_dir():
            return folder / FOLDER
    return here / FOLDER


def default_database_url() -> str:
    return f"sqlite:///{vlmq_home() / 'vlmq.db'}"


def default_broker_folder() -> Path:
    return vlmq_home() / "broker"


def default_store_url() -> str:
    return f"file://{vlmq_home() / 'objects'}"


def default_model_path() -> str:
    return str(vlmq_home() / "models" / "tiny-qwen2-vl")


def logs_folder() -> Path:
    return vlmq_home() / "logs"
