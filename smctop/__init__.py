"""smctop: the live terminal UI of the suite (model, sources, views)."""
