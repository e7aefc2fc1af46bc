"""The TUI canary panel (`pycanary tui`, Textual): a face over the service layer."""

from .app import CanaryApp, run_tui

__all__ = ["CanaryApp", "run_tui"]
