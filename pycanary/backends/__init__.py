"""Queue backends below the routing contract: lists (the default, in worker.py and the list
scripts) and streams (``streams.py``: one stream and consumer group per lane)."""
