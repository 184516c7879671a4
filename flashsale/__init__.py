"""flashsale's command line, settings and server launcher (the engine itself is the ``engine`` package)."""
