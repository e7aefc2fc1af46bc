"""The panel's widgets. Each draws one part of the latest `PanelView` with a pure renderer
(render.py); none reads Redis or acts: the app does both, through the service layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import RenderableType
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from ..panel import PanelView
from . import render

if TYPE_CHECKING:
    from .app import CanaryApp


class Redraws:
    """Redraw from the app's latest view when mounted (e.g. after the layout switched between
    wide and narrow) and when resized (bars and sparklines fit the width). Mixed into every
    widget that shows a view; each defines ``show``."""

    app: CanaryApp

    def on_mount(self) -> None:
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        view = self.canary_app.view
        if view is not None:
            self.show(view)

    @property
    def canary_app(self) -> CanaryApp:
        return self.app

    def show(self, view: PanelView) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class Viewer(Redraws, Static):
    """A Static drawn from each new view."""

    def show(self, view: PanelView) -> None:
        self.update(self.draw(view))

    def draw(self, view: PanelView) -> RenderableType:  # pragma: no cover - overridden
        raise NotImplementedError

    def inner_width(self, default: int = 40) -> int:
        return self.content_size.width or default


class DetailHeader(Viewer):
    def draw(self, view: PanelView) -> RenderableType:
        return render.detail_header(view.row())


class WeightControl(Viewer):
    def draw(self, view: PanelView) -> RenderableType:
        return render.weight_control(view.row(), width=max(10, self.inner_width(50) - 14))


class CompareTable(Viewer):
    def draw(self, view: PanelView) -> RenderableType:
        return render.compare_table(view.row())


class MetricCards(Viewer):
    def draw(self, view: PanelView) -> RenderableType:
        return render.metric_cards(view.row())


class Rules(Viewer):
    def draw(self, view: PanelView) -> RenderableType:
        return render.rules(view.row())


class Sparklines(Viewer):
    def draw(self, view: PanelView) -> RenderableType:
        return render.sparklines(view.series, width=max(8, self.inner_width(40) - 18))


class Workers(Viewer):
    def draw(self, view: PanelView) -> RenderableType:
        return render.workers(view.row())


class Depths(Viewer):
    def draw(self, view: PanelView) -> RenderableType:
        return render.depths(view.row())


class Events(Viewer):
    def draw(self, view: PanelView) -> RenderableType:
        return render.events(view.row(), width=self.inner_width(60))


class DeploymentList(Redraws, OptionList):
    """Every queue with its deployment's status colour and traffic split; choosing one
    selects it for the other panels."""

    def show(self, view: PanelView) -> None:
        """Redraw the entries in place (the highlight stays where the user put it); rebuild
        the list only when queues come or go."""
        width = self.content_size.width or 40
        ids = [r["queue"] for r in view.rows]
        if ids != [o.id for o in self.options]:
            self.set_options([Option(render.deployment_item(r, width), id=r["queue"])
                              for r in view.rows] or
                             [Option("no queues yet: Ctrl+N starts a canary", id="-",
                                     disabled=True)])
        else:
            for r in view.rows:
                self.replace_option_prompt(r["queue"], render.deployment_item(r, width))
        if view.selected in ids:
            index = ids.index(view.selected)
            if self.highlighted != index:
                self.highlighted = index

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        """A user moved the highlight: select that queue. A highlight the list made itself
        (rebuilt, then moved to the selected queue) is stale by the time it arrives."""
        event.stop()
        if event.option_index != self.highlighted or event.option.id in (None, "-"):
            return
        self.canary_app.select(event.option.id)
