"""``python -m cnnlab`` (and ``torchrun -m cnnlab``) runs the command line."""

import atexit
import os
import sys

from .cli import main

code = main()
if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
    # A training process of a distributed run: everything is written and the process group is
    # closed, so leave without C++ static destruction, where gloo's threads can still abort the
    # process ("terminate called without an active exception", SIGABRT) after a clean run.
    # (Compared as text: a malformed WORLD_SIZE was already reported by main, exit status 2.)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
