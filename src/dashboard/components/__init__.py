"""One component per dashboard tab, each a ``pn.viewable.Viewer`` bound to the session's one
``DashboardState`` (``dashboard.state``)."""

from dashboard.components.data import DataView
from dashboard.components.insights import InsightsView
from dashboard.components.monitor import MonitorView
from dashboard.components.predict import PredictView
from dashboard.components.retrain import RetrainView
from dashboard.components.review import ReviewView

__all__ = ["DataView", "InsightsView", "MonitorView", "PredictView", "RetrainView", "ReviewView"]
