"""``modelcycle ui``: a local dashboard over a runs folder (runs, live curves, reports, studies,
drift windows), served by the same FastAPI stack and API-key code as ``modelcycle serve``.
It only reads: nothing under the runs folder is written, and no file outside it is served."""

DEFAULT_PORT = 8600  # beside serve's 8000, so both run at once
