"""Where the orchestration's logs go: one line per record on the console, every record with its
traceback in logs/circuitflow.log (Prefect's logging config: flows/logging.yml).

A stage that fails on bad input raises one sentence (see circuitflow.settings and the stages);
Prefect would print it inside two tracebacks of 40 to 100 lines.  The console keeps the sentence,
the log file keeps the tracebacks for whoever needs them.  flows/cli.py points
PREFECT_LOGGING_SETTINGS_PATH at flows/logging.yml before Prefect is imported.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect.logging.formatters import PrefectFormatter

LOG_FILE = Path("logs") / "circuitflow.log"


class OneLineFormatter(PrefectFormatter):
    """Prefect's console format without the record's traceback or stack (the message is kept
    whole); the record itself is left as it was for the other handlers."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def log_file_handler() -> logging.Handler:
    """Every record, tracebacks included, appended to logs/circuitflow.log (the folder is made)."""
    LOG_FILE.parent.mkdir(exist_ok=True)
    return logging.FileHandler(LOG_FILE, encoding="utf-8", delay=True)
