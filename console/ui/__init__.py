"""Textual screens and widgets; they call services from workers and never do I/O themselves."""
