"""The worker process of :class:`polydl.tune.runner.LocalRunner`:
``python -m polydl.tune._worker READ_FD WRITE_FD``."""

import sys

from polydl.tune.runner import serve

if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
