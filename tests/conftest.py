"""Test-wide settings: the IR verifier runs between the compiler's passes."""

import polydl.pipeline

polydl.pipeline.VERIFY = True
