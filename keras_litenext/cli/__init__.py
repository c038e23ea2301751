"""Command lines of keras-litenext."""
