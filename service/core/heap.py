"""Keep the long-lived engine out of the garbage collector's full passes.

A loaded engine is many Python objects that live as long as it does (model, index, catalogue
ids). CPython's full (generation 2) collections scan every tracked object and run on whichever
thread allocates, holding the GIL: with the engine in view each one paused the event loop and
every request. `freeze_heap` moves everything alive into the permanent generation, which
collections skip; objects freed later by reference counting are still freed at once.

Called once the first engine is loaded and again after every swap. There it first unfreezes, so
the collection it runs also finds reference cycles of the engine just replaced (one full pass
per swap); an old engine a request in flight still holds then is freed by reference counting
when that request ends, or, for its cycles, at the next swap.
"""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Collect what is collectable now, then exclude everything left from later collections."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
