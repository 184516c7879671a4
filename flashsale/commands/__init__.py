"""One module per ``flashsale`` command (or command group)."""
