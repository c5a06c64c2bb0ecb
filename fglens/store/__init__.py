"""The zarr/xarray run format: schema, background writer, `open_run`, `open_runs`, `run_table`."""

from .layout import check_run_id
from .multi import open_runs
from .reader import RunMeta, UnreadableRun, decode_attrs, list_runs, open_run, read_run, run_info, run_table, verify_run
from .schema import DEFINITIONS, SCHEMA_VERSION, VARIABLE_DIMS
from .verify import DamagedRun, Verdict
from .writer import MemorySink, RunWriter, StoreTarget, ZarrSink, new_run_id, store_path

__all__ = [
    "DEFINITIONS", "SCHEMA_VERSION", "VARIABLE_DIMS", "DamagedRun", "MemorySink", "RunMeta", "RunWriter", "StoreTarget",
    "ZarrSink", "check_run_id", "decode_attrs", "list_runs", "new_run_id", "open_run", "open_runs", "read_run",
    "run_info", "run_table", "store_path", "UnreadableRun", "Verdict", "verify_run",
]
