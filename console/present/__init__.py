"""What the console says, as plain text and JSON: the CLI prints it, the TUI styles it.

No Textual and no Rich here, so a headless command and a screen cannot word one thing twice.
Each function returns lines (or entries with a tone the TUI colours), never prints.
"""
