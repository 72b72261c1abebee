"""Every native entry point refuses bad tensors with a Python exception before a pointer reaches C.

The shared crash tests (qcore.testing.LookupOpsSafety) run the bad calls in a subprocess: a call that
reached C with a wrong size would crash the interpreter, which in-process would take pytest down.
"""

from qcore.testing import LookupOpsSafety


class TestOpsSafety(LookupOpsSafety):
    package = "qcore_torchao"
