"""One module per scenario; each has ``run(options) -> Report``."""
