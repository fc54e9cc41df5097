"""The on-disk store below the public API: shard naming, frame I/O, payload
encodings, frame scanning and the columnar index.

Package-internal: the writer, the importer, the reader and the converter build
on these modules; users call :mod:`tfdump_fast` instead.
"""
