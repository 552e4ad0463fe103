"""Imported first by the scripts, before JAX (standard library only): Ctrl-C or SIGTERM while
Python and JAX start up ends the process with one line, not a KeyboardInterrupt traceback
(the trainer installs its own handler, which saves a checkpoint, once it runs)."""

import os
import signal
import sys


def _stop(signum, frame):
    sys.stderr.write(f"stopped by signal {signum} while starting up: nothing was written\n")
    sys.stderr.flush()
    os._exit(128 + signum)


for _sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_sig, _stop)
