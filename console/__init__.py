"""tpuconsole's operator side: the Textual app, its services and adapters, and the sandbox."""
