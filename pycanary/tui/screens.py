"""Modal screens: the confirmation of promote and rollback, the new-canary and configure
forms, and the help overlay. They collect answers; the app acts on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from . import render


class ConfirmScreen(ModalScreen[bool]):
    """States what will happen; Enter confirms, Esc cancels (nothing is written before)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "answer(True)", "Confirm"),
                Binding("escape", "answer(False)", "Cancel")]

    def __init__(self, title: str, body: str) -> None:
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="confirm-title")
            yield Static(self.body, id="confirm-body", markup=False)
            with Horizontal(classes="buttons"):
                ok = Button("Confirm (Enter)", variant="error", id="confirm-yes")
                no = Button("Cancel (Esc)", id="confirm-no")
                # not focusable: Enter must confirm and Esc cancel whatever has focus
                ok.can_focus = no.can_focus = False
                yield ok
                yield no

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")


@dataclass(frozen=True)
class NewCanary:
    """What the new-canary form asked for: a plan file makes a ramp, else a manual canary."""

    queue: str
    version: str
    plan: str
    weight: str
    force: bool
    allow_schema_change: bool


class NewCanaryScreen(ModalScreen[NewCanary | None]):
    """Ctrl+N: queue, version, plan file or weight. Enter starts, Esc cancels. The app
    keeps the form open and shows the refusal when the service refuses."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, queue: str | None) -> None:
        super().__init__()
        self.queue = queue or ""

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("New canary", id="form-title")
            yield Label("queue")
            yield Input(self.queue, placeholder="e.g. payments", id="f-queue", compact=True)
            yield Label("canary version")
            yield Input(placeholder="e.g. v2", id="f-version", compact=True)
            yield Label("plan file (YAML) for a staged ramp; empty: a manual canary")
            yield Input(placeholder="e.g. examples/plans/quick.yaml", id="f-plan",
                        compact=True)
            yield Label("weight percent of a manual canary")
            yield Input("10", id="f-weight", compact=True)
            yield Checkbox("force: start without a live canary worker / controller",
                           id="f-force", compact=True)
            yield Checkbox("allow schema change", id="f-schema", compact=True)
            yield Static("", id="form-error")
            yield Static("Enter starts it, Esc cancels", classes="hint")

    def on_mount(self) -> None:
        self.query_one("#f-version" if self.queue else "#f-queue", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        get = lambda i: self.query_one(i, Input).value.strip()  # noqa: E731
        self.app.start_canary(self, NewCanary(  # type: ignore[attr-defined]
            queue=get("#f-queue"), version=get("#f-version"), plan=get("#f-plan"),
            weight=get("#f-weight"), force=self.query_one("#f-force", Checkbox).value,
            allow_schema_change=self.query_one("#f-schema", Checkbox).value))

    def show_error(self, text: str) -> None:
        self.query_one("#form-error", Static).update(
            Text.assemble(("refused: ", "bold red"), text))

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfigureScreen(ModalScreen[str | None]):
    """The queue's max_weight guard (what `pycanary queue configure --max-weight` sets)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, queue: str, max_weight: float) -> None:
        super().__init__()
        self.queue = queue
        self.max_weight = max_weight

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Configure {self.queue}", id="form-title")
            yield Label("max_weight: the highest canary percent this queue allows")
            yield Input(f"{self.max_weight:g}", id="f-max-weight", compact=True)
            yield Static("", id="form-error")
            yield Static("Enter saves, Esc cancels", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.app.configure_queue(self, self.queue, event.value.strip())  # type: ignore

    def show_error(self, text: str) -> None:
        self.query_one("#form-error", Static).update(
            Text.assemble(("refused: ", "bold red"), text))

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(render.HELP, id="help-text")
            yield Static("Esc closes", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)
