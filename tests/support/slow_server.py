"""`bourse serve`'s server code path, plus one endpoint that takes two seconds.

Run as ``python -m tests.support.slow_server PORT`` with BOURSE_* settings in the
environment. Used to prove graceful shutdown with a request in flight.
"""

from __future__ import annotations

import sys
import time

from bourse.api.routing import router
from bourse.app import create_app
from bourse.logging import configure_logging
from bourse.server import run_server
from bourse.settings import load_settings


def main() -> None:
    port = int(sys.argv[1])
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    slow = router(prefix="/api/v1/test")

    @slow.get("/slow")
    def slow_request() -> dict[str, str]:
        time.sleep(2)
        return {"status": "finished"}

    app.include_router(slow)
    sys.exit(0 if run_server(app, settings, host="127.0.0.1", port=port) else 1)


if __name__ == "__main__":
    main()
