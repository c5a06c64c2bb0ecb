"""The zarr/xarray run format: schema, background writer, `open_run`."""

from .reader import decode_attrs, list_runs, open_run
from .schema import DEFINITIONS, SCHEMA_VERSION, VARIABLE_DIMS
from .writer import MemorySink, RunWriter, ZarrSink, new_run_id, store_path

__all__ = [
    "DEFINITIONS", "SCHEMA_VERSION", "VARIABLE_DIMS", "MemorySink", "RunWriter", "ZarrSink",
    "decode_attrs", "list_runs", "new_run_id", "open_run", "store_path",
]
