"""dramatiq worker entry point: `dramatiq workers` (or `jvmail worker` once sending lands).

It only sets the broker from JVMAIL_REDIS_URL (in-process when unset); the actors that send,
track and report are imported here as those stages are added.
"""

import os

import dramatiq

from jvmail.broker import make_broker

dramatiq.set_broker(make_broker(os.environ.get("JVMAIL_REDIS_URL")))
