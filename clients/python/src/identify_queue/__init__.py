"""The client of ``identify-queue-server``: when may each shard of a Discord bot IDENTIFY.

.. code-block:: python

    from identify_queue import IdentifyQueue

    queue = IdentifyQueue("http://queue:8000")
    await queue.wait(shard_id)   # then IDENTIFY

For discord.py, :class:`identify_queue.discord.IdentifyQueueMixin` does it for every
shard of an ``AutoShardedClient``.
"""

from ._queue import Grant, IdentifyQueue

__all__ = ["Grant", "IdentifyQueue"]
__version__ = "0.1.0"
