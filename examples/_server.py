"""Where the examples find the server: $VPSWEB_TASKS_URL, else the document's address."""

import os

BASE_URL = os.environ.get("VPSWEB_TASKS_URL", "http://localhost:8000").rstrip("/")
