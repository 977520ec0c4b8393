"""The judgment inspector: web pages that show why a response got its reward.

Served on the HTTP port of ``grm serve`` (under ``/inspect``, next to OpenRLHF's
``/get_reward``) and by ``grm inspect`` for saved files without a model. Parts:
``recorder`` (the last N scored inputs, kept by the servicer when ``--record N`` is set),
``app`` (the routes), ``input_view`` (one judged input), ``report_pages`` (evaluation
reports and training runs), ``sources`` (reading those files), ``try_form`` (scoring a
typed conversation through the service), ``html`` (escaping and the page frame) and
``static/`` (the page script, the style sheet and the vendored uPlot chart library).

    inspector = Inspector(recorder=RecentRequests(1000), target="127.0.0.1:50051")
    RewardHTTPServer("127.0.0.1:50051", port=8000, inspector=inspector).start()
"""

from services.inspector.app import Inspector, Reply
from services.inspector.recorder import RecentRequests

__all__ = ["Inspector", "Reply", "RecentRequests"]
