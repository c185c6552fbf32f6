"""The database layer: every MongoDB query of the service, one module per collection, and the
only package that imports the driver (``pymongo``'s asyncio client).

Keeping every query here means each one has an index next to it (``indexes.py``), the
document layout is written once (``codecs.py``), and outages surface as
``server.errors.Unavailable`` rather than driver exceptions.
"""

from server.store.base import Duplicate
from server.store.database import Store
from server.store.outbox import Recorded
from server.store.sealed import SealedField

__all__ = ["Duplicate", "Recorded", "SealedField", "Store"]
