"""`pycanary tui`: the canary panel (Textual), a face over the service layer.

It reads one `panel.view` per refresh (at most once a second, in a worker thread, so input
never waits on Redis) and acts only through the service functions the CLI uses:
`service.set_weight`, `rollouts.promote / rollback / pause / resume / start_canary / ramp`,
`service.configure_queue`. When Redis stops answering it shows "Redis unreachable, retrying"
over the last data it had, and carries on once Redis answers again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import redis
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Static, TabbedContent, TabPane

from .. import defaults, panel, rollouts, service
from ..connection import Connection
from ..errors import ConnectionFailedError, PycanaryError
from ..plan import PlanError
from ..watch import shorten
from . import render
from .screens import ConfigureScreen, ConfirmScreen, HelpScreen, NewCanary, NewCanaryScreen
from .widgets import (
    CompareTable,
    DeploymentList,
    Depths,
    DetailHeader,
    Events,
    MetricCards,
    Rules,
    Sparklines,
    Viewer,
    WeightControl,
    Workers,
)

#: Terminals at least this wide get the three panels; narrower ones get tabs.
WIDE_COLUMNS = 120
TABS = ("tab-control", "tab-metrics", "tab-workers", "tab-events")
#: Errors that mean "Redis did not answer" (retried on the next refresh).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
              ConnectionFailedError, OSError)
UNREACHABLE = "Redis unreachable, retrying"

Reader = Callable[[str | None], panel.PanelView]


class _Cancelled(Exception):
    """The person said no in a confirmation: nothing was written."""


class PanelScreen(Screen[None]):
    """The panel: three columns on a wide terminal, tabs on a narrow one (switched live
    when the terminal is resized). The keys live here, not on the app, so that they do
    nothing while a confirmation or a form is open."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "next_panel", "Panels", show=False),
        *[Binding(str(n), f"weight({n * 10})", f"{n * 10}%", show=False) for n in range(1, 10)],
        Binding("p", "promote", "Promote"),
        Binding("r", "rollback", "Rollback"),
        Binding("space", "toggle", "Pause/resume"),
        Binding("pause,s", "pause", "Pause", show=False),
        Binding("c", "configure", "Configure", show=False),
        Binding("ctrl+n", "new", "New canary"),
        Binding("m", "metrics", "Metrics"),
        Binding("e,ctrl+e", "events", "Events"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "app.quit", "Quit"),
    ]

    #: What stays on screen while a panel is maximised (m, e).
    ALLOW_IN_MAXIMIZED_VIEW = "#top, #message, Footer"

    def __init__(self) -> None:
        super().__init__()
        self.wide = True

    @property
    def canary_app(self) -> CanaryApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        self.wide = self.app.size.width >= WIDE_COLUMNS
        with Vertical(id="top"):
            yield Static(id="title")
            banner = Static(UNREACHABLE, id="banner")
            banner.display = False
            yield banner
        if self.wide:
            with Horizontal(id="panels"):
                with Vertical(id="left", classes="panel") as left:
                    left.border_title = "Deployments"
                    yield DeploymentList(id="deployments")
                    yield Button("New canary (Ctrl+N)", id="new", variant="primary")
                with VerticalScroll(id="centre", classes="panel") as centre:
                    centre.border_title = "Deployment control"
                    yield DetailHeader(id="detail")
                    yield from self._weight_and_buttons()
                    yield CompareTable(id="compare")
                    yield Rules(id="rules")
                with VerticalScroll(id="right", classes="panel") as right:
                    right.border_title = "Live monitoring"
                    yield Sparklines(id="sparks")
                    yield Workers(id="workers")
                    yield Depths(id="depths")
                    yield Events(id="events")
        else:
            with TabbedContent(id="tabs"):
                with TabPane("Control", id="tab-control"), VerticalScroll():
                    yield DeploymentList(id="deployments")
                    yield DetailHeader(id="detail")
                    yield from self._weight_and_buttons()
                    yield Button("New canary (Ctrl+N)", id="new", variant="primary")
                with TabPane("Metrics", id="tab-metrics"), VerticalScroll():
                    yield Sparklines(id="sparks")
                    yield MetricCards(id="cards")
                    yield Rules(id="rules")
                with TabPane("Workers", id="tab-workers"), VerticalScroll():
                    yield Workers(id="workers")
                    yield Depths(id="depths")
                with TabPane("Events", id="tab-events"), VerticalScroll():
                    yield Events(id="events")
        yield Static(id="message")
        yield Footer()

    def _weight_and_buttons(self) -> ComposeResult:
        with Horizontal(classes="weight-row"):
            yield Button("-10", id="weight-down", compact=True)
            yield WeightControl(id="weight")
            yield Button("+10", id="weight-up", compact=True)
        with Horizontal(classes="buttons"):
            yield Button("Promote", id="promote", variant="success")
            yield Button("Rollback", id="rollback", variant="error")
            yield Button("Pause", id="toggle", variant="warning")
            yield Button("Configure", id="configure")

    def on_mount(self) -> None:
        self.show_all()

    async def on_resize(self, event: Any) -> None:
        if (self.app.size.width >= WIDE_COLUMNS) != self.wide:
            await self.recompose()
            self.show_all()

    # -- drawing ---------------------------------------------------------------------------
    def show_all(self) -> None:
        """Draw the latest view, the banner and the message line."""
        app = self.canary_app
        view = app.view
        self.query_one("#title", Static).update(render.title(view, app.where))
        banner = self.query_one("#banner", Static)
        banner.display = app.unreachable is not None
        if app.unreachable is not None:
            banner.update(Text(f"{UNREACHABLE} ({shorten(app.unreachable, 100)})"))
        self.query_one("#message", Static).update(app.message)
        if view is None:
            return
        for w in self.query(Viewer):
            w.show(view)
        for dl in self.query(DeploymentList):
            dl.show(view)
        row = view.row()
        dep = (row or {}).get("deployment") or {}
        for b in self.query("#toggle").results(Button):
            b.label = "Resume" if dep.get("state") == "paused" else "Pause"

    # -- actions ---------------------------------------------------------------------------
    def on_button_pressed(self, event: Button.Pressed) -> None:
        actions: dict[str, Callable[[], Any]] = {
            "new": self.action_new, "promote": self.action_promote,
            "rollback": self.action_rollback, "toggle": self.action_toggle,
            "configure": self.action_configure,
            "weight-down": lambda: self.canary_app.step_weight(-10),
            "weight-up": lambda: self.canary_app.step_weight(10)}
        if event.button.id in actions:
            actions[event.button.id]()

    def action_weight(self, percent: int) -> None:
        self.canary_app.set_weight(percent)

    def action_promote(self) -> None:
        self.canary_app.promote()

    def action_rollback(self) -> None:
        self.canary_app.ask_rollback()

    def action_toggle(self) -> None:
        self.canary_app.toggle()

    def action_pause(self) -> None:
        self.canary_app.pause()

    def action_configure(self) -> None:
        self.canary_app.ask_configure()

    def action_new(self) -> None:
        self.canary_app.push_screen(NewCanaryScreen(self.canary_app.selected))

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    def action_next_panel(self) -> None:
        """Tab: the next of the three panels (wide) or the next tab (narrow)."""
        if not self.wide:
            tabs = self.query_one(TabbedContent)
            tabs.active = TABS[(TABS.index(tabs.active) + 1) % len(TABS)] \
                if tabs.active in TABS else TABS[0]
            return
        order = [self.query_one("#deployments"), self.query_one("#centre"),
                 self.query_one("#right")]
        focused = self.focused
        current = next((i for i, w in enumerate(order)
                        if focused is not None and (focused is w or w in focused.ancestors)),
                       -1)
        order[(current + 1) % len(order)].focus()

    def _toggle_view(self, tab: str, widget_id: str) -> None:
        if not self.wide:
            self.query_one(TabbedContent).active = tab
            return
        if self.maximized is not None:
            self.minimize()
        else:
            # set directly: maximize() only takes focusable widgets, a panel is not one
            self.maximized = self.query_one(widget_id)

    def action_metrics(self) -> None:
        """m: the monitoring panel maximised (wide) or the Metrics tab (narrow)."""
        self._toggle_view("tab-metrics", "#right")

    def action_events(self) -> None:
        """e / Ctrl+E: the event log maximised (wide) or the Events tab (narrow)."""
        self._toggle_view("tab-events", "#events")


class CanaryApp(App[None]):
    """The canary panel. ``conn`` is where it reads and acts; ``reader`` replaces the reading
    (tests feed fixed views through it, so a screenshot is the same every run)."""

    CSS_PATH = "app.tcss"
    TITLE = "pycanary"

    def __init__(self, conn: Connection | None = None, *, queue: str | None = None,
                 refresh_s: float = defaults.TUI_REFRESH_S, reader: Reader | None = None,
                 where: str | None = None, actor: str | None = None) -> None:
        super().__init__()
        if conn is None and reader is None:
            raise ValueError("CanaryApp needs a connection or a reader")
        self.conn = conn
        self.refresh_s = max(defaults.TUI_MIN_REFRESH_S, float(refresh_s))
        self.reader: Reader = reader or (lambda sel: panel.view(conn, sel))  # type: ignore
        self.where = where if where is not None else (
            f"{conn.safe_url} prefix {conn.keys.prefix}" if conn is not None else "")
        self.actor = actor or rollouts.operator("tui")
        self.selected = queue
        self.view: panel.PanelView | None = None
        #: why the last reading failed (Redis unreachable), None when it worked
        self.unreachable: str | None = None
        self.message: Text = Text("? for help", style="grey62")
        self.panel_screen = PanelScreen()
        self._reading = threading.Lock()
        self._acting = threading.Lock()
        self._pending: list[asyncio.Future[bool]] = []
        self.refreshes = 0

    def on_mount(self) -> None:
        self.push_screen(self.panel_screen)
        self.set_interval(self.refresh_s, self.refresh_data)
        self.refresh_data()

    def _post(self, fn: Callable[..., Any], *args: Any) -> Any:
        """call_from_thread that tolerates the app having just quit (a reading or an action
        finishing after the last screen closed has nowhere to show its result)."""
        try:
            return self.call_from_thread(fn, *args)
        except RuntimeError:
            return None

    def on_unmount(self) -> None:
        for fut in self._pending:  # a thread waiting on a confirmation: the answer is no
            if not fut.done():
                fut.set_result(False)

    # -- reading ---------------------------------------------------------------------------
    @work(thread=True, group="read", exit_on_error=False)
    def refresh_data(self) -> None:
        """One reading, off the event loop. Skipped while the previous one still runs, so
        a slow Redis never piles readings up (at most one per refresh interval)."""
        if not self._reading.acquire(blocking=False):
            return
        try:
            try:
                view = self.reader(self.selected)
            except REDIS_DOWN as exc:
                self._post(self._lost, f"{type(exc).__name__}: {exc}")
                return
            except redis.exceptions.RedisError as exc:  # answered, but with an error
                self._post(self._lost, f"Redis answered: {exc}")
                return
            self._post(self._apply, view)
        finally:
            self._reading.release()

    def _apply(self, view: panel.PanelView) -> None:
        self.refreshes += 1
        if self.unreachable is not None:
            self.unreachable = None
            self.say("Redis answers again", "green")
        if self.selected is None or view.row(self.selected) is None:
            self.selected = view.selected
        elif view.selected != self.selected:  # read just before the user chose another one
            view.selected, view.series = self.selected, {}
        self.view = view
        self.panel_screen.show_all()

    def _lost(self, why: str) -> None:
        self.unreachable = why
        self.panel_screen.show_all()

    def select(self, queue: str) -> None:
        if queue != self.selected:
            self.selected = queue
            if self.view is not None:
                self.view.selected = queue
                self.view.series = {}
                self.panel_screen.show_all()
            self.refresh_data()

    def say(self, text: str, style: str = "") -> None:
        self.message = Text(text, style=style)
        if self.panel_screen.is_mounted:
            self.panel_screen.query_one("#message", Static).update(self.message)

    # -- acting (each in a thread; one at a time) ------------------------------------------
    def _row(self) -> dict[str, Any] | None:
        return self.view.row(self.selected) if self.view is not None else None

    def _need_queue(self) -> str | None:
        if self.conn is None:
            self.say("read-only view: no connection", "yellow")
            return None
        if self.selected is None:
            self.say("no queue selected: Ctrl+N starts a canary", "yellow")
            return None
        return self.selected

    def _act(self, what: str, fn: Callable[[], str | None]) -> None:
        """Run ``fn`` in a worker thread, say what it returned, refresh; a refusal shows its
        one-line reason (field: message), a dead Redis the banner."""
        if not self._acting.acquire(blocking=False):
            self.say("busy: the previous action is still running", "yellow")
            return
        self.say(f"{what}...", "grey62")
        self._run_action(what, fn)

    @work(thread=True, group="act", exit_on_error=False)
    def _run_action(self, what: str, fn: Callable[[], str | None]) -> None:
        try:
            try:
                text = fn()
                style = "green"
            except _Cancelled:
                text, style = f"{what} cancelled: nothing changed", "yellow"
            except PlanError as exc:
                text, style = f"{what} refused: {exc.field}: {exc.message}", "bold red"
            except PycanaryError as exc:
                text, style = f"{what} refused: {exc}", "bold red"
            except REDIS_DOWN as exc:
                text, style = f"{what} failed: {UNREACHABLE} ({type(exc).__name__})", "bold red"
            except Exception as exc:  # shown, never a crash of the panel
                text, style = f"{what} failed: {type(exc).__name__}: {exc}", "bold red"
            if text:
                self._post(self.say, text, style)
        finally:
            self._acting.release()
        self._post(self.refresh_data)

    def set_weight(self, percent: float) -> None:
        queue = self._need_queue()
        if queue is None:
            return

        def run() -> str:
            ch = service.set_weight(self.conn, queue, percent, actor=self.actor)
            return (f"{queue}: weight {percent:g}%" + (
                "; the deployment is paused until resume (Space)"
                if ch.paused_deployment else ""))

        self._act(f"set weight {percent:g}%", run)

    def step_weight(self, delta: float) -> None:
        row = self._row()
        if row is not None:
            self.set_weight(min(100.0, max(0.0, render.weight_of(row) + delta)))

    async def _ask(self, title: str, body: str) -> bool:
        """Show a confirmation and wait for its answer (called from a worker thread)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(fut)

        def done(answer: bool | None) -> None:
            if not fut.done():
                fut.set_result(bool(answer))

        self.push_screen(ConfirmScreen(title, body), callback=done)
        try:
            return await fut
        finally:
            self._pending.remove(fut)

    def promote(self) -> None:
        """p: rollouts.promote, whose confirm hook says where the promotion goes (next stage
        or 100%) from the deployment as it is now, before anything is written."""
        queue = self._need_queue()
        if queue is None:
            return

        def confirm(dep: Any, target: str) -> None:
            final = target.startswith("100%")
            body = (f"{dep.canary_version} becomes the stable version of {queue}; the canary "
                    f"lane drains into stable; {dep.stable_version} workers keep serving "
                    "as outdated until you stop them." if final else
                    f"The weight goes to the next stage's share and the controller checks "
                    f"{dep.canary_version} there.")
            if not self._post(self._ask, f"Promote {dep.canary_version} on "
                                         f"{queue} to {target}?", body):
                raise _Cancelled

        def run() -> str:
            res = rollouts.promote(self.conn, queue, actor=self.actor, confirm=confirm)
            if res["action"] == "promoted":
                return f"{queue}: {res['stable_version']} is now stable ({res['state']})"
            return f"{queue}: advanced to stage {res['stage'] + 1} ({res['percent']:g}%)"

        self._act("promote", run)

    def ask_rollback(self) -> None:
        """r: a confirmation stating what the rollback does, then rollouts.rollback."""
        queue = self._need_queue()
        if queue is None:
            return
        row = self._row() or {}
        dep = row.get("deployment") or {}
        version = dep.get("canary_version") or row.get("config", {}).get("canary_version") \
            or "the canary"
        depth = (row.get("depth") or {}).get("canary", 0)
        body = (f"Weight {render.weight_of(row):g}% -> 0 for the very next job; {version} "
                f"workers retire within a heartbeat; the canary lane ({depth:,} jobs) drains "
                "into the head of the stable lane, in order.")

        def answered(yes: bool | None) -> None:
            if not yes:
                self.say("rollback cancelled: nothing changed", "yellow")
                return
            self._act("rollback", lambda: rollouts.rollback(
                self.conn, queue, reason=f"rolled back from the TUI by {self.actor}",
                actor=self.actor)["message"])

        self.push_screen(ConfirmScreen(f"Roll back {version} on {queue}?", body),
                         callback=answered)

    def toggle(self) -> None:
        """Space: pause a running deployment, resume a paused one (the automatic stage
        progression: pycanary has no other auto-promotion switch)."""
        queue = self._need_queue()
        if queue is None:
            return
        state = ((self._row() or {}).get("deployment") or {}).get("state")
        if state == "paused":
            def run() -> str:
                dep = rollouts.resume(self.conn, queue, actor=self.actor)
                return f"{queue}: resumed ({dep.state})"

            self._act("resume", run)
        else:
            self.pause()

    def pause(self) -> None:
        queue = self._need_queue()
        if queue is None:
            return
        def run() -> str:
            dep = rollouts.pause(self.conn, queue, actor=self.actor)
            return f"{queue}: {dep.state} (Space resumes)"

        self._act("pause", run)

    def ask_configure(self) -> None:
        queue = self._need_queue()
        row = self._row()
        if queue is None or row is None:
            return
        self.push_screen(ConfigureScreen(queue, row["config"].get("max_weight_percent", 100)))

    def configure_queue(self, form: ConfigureScreen, queue: str, max_weight: str) -> None:
        def run() -> str:
            try:
                cfg = service.configure_queue(self.conn, queue, max_weight=max_weight)
            except PycanaryError as exc:
                self._post(form.show_error, str(exc))
                raise
            self._post(form.dismiss, None)
            return f"{queue}: max_weight {cfg.max_weight_bp / 100:g}%"

        self._act("configure", run)

    def start_canary(self, form: NewCanaryScreen, req: NewCanary) -> None:
        """The new-canary form: a ramp with a plan file, else a manual canary at the weight
        (rollouts.ramp / start_canary, as `pycanary ramp` and `canary start`)."""
        if self.conn is None:
            self.say("read-only view: no connection", "yellow")
            return

        def run() -> str:
            try:
                if req.plan:
                    dep = rollouts.ramp(self.conn, req.queue, req.version, req.plan,
                                        allow_schema_change=req.allow_schema_change,
                                        force=req.force, actor=self.actor)
                else:
                    dep = rollouts.start_canary(self.conn, req.queue, req.version,
                                                weight=req.weight or "10",
                                                allow_schema_change=req.allow_schema_change,
                                                force=req.force, actor=self.actor)
            except PlanError as exc:
                self._post(form.show_error, f"{exc.field}: {exc.message}")
                raise
            except (PycanaryError, OSError) as exc:
                self._post(form.show_error, str(exc))
                raise
            self._post(form.dismiss, None)
            self.selected = req.queue
            return (f"{req.queue}: deployment {dep.id} of {dep.canary_version} started at "
                    f"{dep.weight_bp / 100:g}%")

        self._act("new canary", run)


def run_tui(conn: Connection, *, queue: str | None = None,
            refresh_s: float = defaults.TUI_REFRESH_S) -> None:
    CanaryApp(conn, queue=queue, refresh_s=refresh_s).run()
