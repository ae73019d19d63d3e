"""Log output for ``twistd yurthub``: level filtering and text or JSON lines.

twistd builds its log observer from a factory it names with ``--logger``; the yurthub
options point it here after reading ``logging.level`` and ``logging.format`` from the
config, so the config decides unless the operator passes ``--logger`` themself.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}

#: What `observer` builds; set by `configure` before twistd calls it (logging is
#: process-wide by nature, so this is the one piece of process-wide state).
_settings: dict[str, object] = {"level": "info", "format": "text", "stream": None}


def make_observer(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> ILogObserver:
    """An observer writing events at ``level`` or above to ``stream`` as text or JSON."""
    out = stream if stream is not None else sys.stdout
    inner = jsonFileLogObserver(out) if fmt == "json" else textFileLogObserver(out)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
    return FilteringLogObserver(inner, [predicate])


def configure(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Choose what the next call of `observer` builds."""
    _settings.update(level=level, format=fmt, stream=stream)


def observer() -> ILogObserver:
    """The factory twistd calls (``--logger=yurthub.logs.observer``)."""
    return make_observer(str(_settings["level"]), str(_settings["format"]), _settings["stream"])  # type: ignore[arg-type]
