"""WiSE-FT for a fine-tune that runs elsewhere: ``track`` for a hand-written loop, and
callbacks for Hugging Face's ``Trainer`` (``wiseft.integrations.transformers.WiseftCallback``,
``pip install 'wiseft[trainer]'``) and Lightning (``wiseft.integrations.lightning.WiseftCallback``,
``pip install 'wiseft[lightning]'``). theta_0 is snapshotted when training starts; when it
ends, the alpha sweep, records, summary, export and report ``wiseft run`` writes, by the same
code. Importing this package imports neither framework."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "tracked": ["check_matches", "IntegrationError", "track", "TrackedRun"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
