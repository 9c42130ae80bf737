"""Plain-asyncio services the UI and the CLI share; no widgets here."""
