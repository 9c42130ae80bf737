"""Widgets that show state and post messages; the screens that compose them do the I/O."""
