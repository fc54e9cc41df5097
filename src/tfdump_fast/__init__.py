"""tfdump-fast: dump every watched tensor of a TensorFlow step, fast.

Importing the package does not import TensorFlow: the reader works without
it. The hook and the bridge import TensorFlow when first used.
"""

from tfdump_fast.errors import (
    TfdumpBridgeError,
    TfdumpClosedError,
    TfdumpCorruptionError,
    TfdumpDiskBudgetError,
    TfdumpError,
    TfdumpFormatError,
    TfdumpIOError,
    TfdumpNotFoundError,
    TfdumpTruncatedError,
    TfdumpTypeError,
    TfdumpUsageError,
)

__version__ = "0.1.0"

# Public names resolved on first use, so `import tfdump_fast` stays light.
_LAZY = {
    "DumpWriter": "tfdump_fast.writer",
    "DumpReader": "tfdump_fast.reader",
    "convert": "tfdump_fast.conversion",
    "import_tfdbg": "tfdump_fast.importer",
    "StoreDumpDir": "tfdump_fast.dumpdir",
    "has_inf_or_nan": "tfdump_fast.reader",
    "DumpingDebugHook": "tfdump_fast.hooks",
    "DumpingDebugWrapperSession": "tfdump_fast.wrapper",
    "WatchOptions": "tfdump_fast.watches",
    "StepSampler": "tfdump_fast.sampling",
    "capture_run": "tfdump_fast.capture",
    "CapturedRun": "tfdump_fast.capture",
    "serve": "tfdump_fast.serving",
    "enable_dump_debug_info": "tfdump_fast.tf2",
    "disable_dump_debug_info": "tfdump_fast.tf2",
    "Tf2Dump": "tfdump_fast.tf2_reader",
    "import_tfdbg2": "tfdump_fast.tf2_importer",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tfdump_fast' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
