"""servesim from Python: run and compare simulations in-process, results as pandas DataFrames.

    import servesim
    r = servesim.run(overrides={"workload.max_requests": 500}, seed=1)
    r.requests        # one row per request: requests.csv, with its dtypes (below)
    r.timeseries      # one row per replica per sample: timeseries.csv
    r.replicas        # one row per replica: replicas.csv
    r.summary         # summary.json as a dict (the metric names of `vllm bench serve`)
    r.config          # resolved.toml: every setting the run used
    r.to_dir("results/my-run")

    c = servesim.compare({"engine.prefix_caching": [True, False]},
                         overrides={"workload.max_requests": 500})
    c.table           # comparison.csv: one row per variant, deltas against the first
    c.paired          # paired_requests.csv: each request under every variant
    c.runs["prefix_caching=false"].requests

Both run the CLI's `servesim run` / `servesim compare` in this process (the GIL released while it
simulates), on the same config rules: `config` is a TOML file (None: the embedded default chat workload),
`overrides` maps dotted keys to values (each becomes `--set key=value`, the value written as TOML), `seed`
overrides the config's seed. The same seed gives the same rows, byte for byte, as the CLI. Outputs go to
`out` when given (the CLI's rules: a previous servesim output there is replaced, anything else refused),
else to a temporary directory removed when the result is no longer referenced; `to_dir` copies them.

Errors: `ConfigError` (a `ValueError`) for bad input, with the CLI's message naming the file, line, key
and what to do; `ServesimError` (a `RuntimeError`) when outputs cannot be written; `TypeError` for an
argument of the wrong kind (an override value that has no TOML form); an `out=` the CLI would refuse
(an existing directory that is not servesim's) is bad input too. A bug inside the simulator raises
pyo3's `PanicException`. A run cannot be interrupted (Ctrl-C takes effect when it ends: a simulation
holds no Python state to stop in). A relative path in a config (a
trace's `workload.trace.path`) is read from the working directory, as the CLI reads it: from a notebook
elsewhere, override it with an absolute path. Keep a reference to a result while using its `path`: its
temporary directory goes when the result does. The README's "Python" section has a worked example.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import pandas as pd

from ._servesim import ConfigError, ServesimError, __version__
from ._servesim import compare as _compare
from ._servesim import run as _run

__all__ = ["run", "compare", "load", "Result", "Comparison", "ConfigError", "ServesimError", "__version__"]

PathLike = Union[str, "os.PathLike[str]"]

# requests.csv's dtypes. Ids are unsigned 64-bit (a trace's session ids may use the whole range);
# `replica` is empty for a request that never reached one, `batch_id` outside the dynamic batcher,
# `prefill_replica` outside a disaggregated cluster (nullable); an empty float cell (the TTFT of a rejected request) is NaN, an empty string <NA>.
_REQUEST_DTYPES = {
    "request_id": "uint64", "session_id": "uint64", "turn": "int64", "replica": "Int64",
    "status": "string", "finish_reason": "string",
    "arrival_s": "float64", "scheduled_s": "float64", "first_token_s": "float64", "finish_s": "float64",
    "prompt_tokens": "int64", "cached_tokens": "int64", "cached_tokens_gpu": "int64",
    "cached_tokens_cpu": "int64", "cached_tokens_disk": "int64", "kv_load_s": "float64",
    "prefilled_tokens": "int64", "output_tokens": "int64",
    "ttft_s": "float64", "tpot_s": "float64", "e2e_s": "float64", "queue_s": "float64",
    "preemptions": "int64", "priority": "int64", "batch_id": "UInt64", "padding_tokens": "int64",
    "attempt": "int64", "failure_reason": "string",
    "prefill_replica": "Int64", "prefill_queue_s": "float64", "prefill_s": "float64",
    "kv_transfer_s": "float64", "decode_queue_s": "float64", "decode_s": "float64",
}


def _toml(value: Any, key: str) -> str:
    """The TOML text of an override value (what `--set key=<text>` takes)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalars and arrays
        value = value.tolist()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string: the same quotes and escapes.
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v, key) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v, key)}" for k, v in value.items()) + " }"
    raise TypeError(
        f"overrides[{key!r}]: a {type(value).__name__} has no TOML form; "
        "give a bool, int, float, str, path, list or dict"
    )


def _sets(overrides: Optional[Mapping[str, Any]]) -> list:
    if overrides is None:
        return []
    if not isinstance(overrides, Mapping):
        raise TypeError("overrides: give a dict of dotted keys to values, e.g. {'engine.prefix_caching': False}")
    return [f"{k}={_toml(v, k)}" for k, v in overrides.items()]


def _out(out: PathLike) -> Path:
    # Absolute: a result reads its files when asked, perhaps after the working directory changed.
    return Path(out).expanduser().resolve()


def _check_seed(seed: Optional[int]) -> None:
    if seed is not None and not (isinstance(seed, numbers.Integral) and 0 <= int(seed) < 2**64):
        raise ConfigError(f"seed: {seed!r} is not an integer from 0 to 2^64 - 1")


def _seed(seed: Optional[int]) -> Optional[int]:
    return None if seed is None else int(seed)


def _path(p: Optional[PathLike]) -> Optional[str]:
    return None if p is None else os.fspath(p)


def _warn(messages: Iterable[str]) -> None:
    for m in messages:
        warnings.warn(f"servesim: {m}", stacklevel=3)


class _Scratch:
    """A temporary directory removed when the last result reading it goes away."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="servesim-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.path, True)


def _request_dtypes(columns: Iterable[str]) -> dict:
    # A column this package does not know (a newer servesim) keeps what pandas infers.
    return {c: _REQUEST_DTYPES[c] for c in columns if c in _REQUEST_DTYPES}


def _read_requests(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Integers to pandas' nullable integer types first, so that no value passes through a float
        # (a nullable column with nulls would), then to the CSV's dtypes.
        nullable = {pa.uint64(): pd.UInt64Dtype(), pa.uint32(): pd.UInt32Dtype(), pa.int64(): pd.Int64Dtype()}
        df = pq.read_table(path).to_pandas(types_mapper=nullable.get)
        return df.astype(_request_dtypes(df.columns))
    header = pd.read_csv(path, nrows=0).columns
    # Only an empty cell is missing: no word ("NA", "null") is read as one.
    return pd.read_csv(path, dtype=_request_dtypes(header), keep_default_na=False, na_values=[""])


def _read_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    # Text columns as pandas' "string" dtype, as in `requests` (pandas would pick object or str).
    text = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    return df.astype({c: "string" for c in text})


class Result:
    """One run's outputs (the files of `servesim run`), read on first access.

    Attributes (each read once, then kept):
      requests    DataFrame, one row per request in `requests.csv` order (requests leave the system in
                  finish order; read from `requests.parquet` for a run made with format="parquet").
                  `request_id`, `session_id`: uint64; other integer columns int64 (`replica`: nullable
                  Int64, empty for a request that never reached a replica; `prefill_replica`:
                  nullable Int64, empty outside a disaggregated cluster; `batch_id`: nullable
                  UInt64, empty outside the dynamic batcher); `status`, `finish_reason`,
                  `failure_reason`: string (<NA> when empty); all else float64 seconds (NaN when
                  empty, e.g. a rejected request's TTFT). The README defines each column.
      timeseries  DataFrame, one row per replica per sample (`timeseries.csv`).
      replicas    DataFrame, one row per replica (`replicas.csv`).
      summary     dict (`summary.json`).
      config      str, the resolved config (`resolved.toml`): rerunning it reproduces the run.
      text        str, the summary the CLI prints (empty for the runs of a comparison).
      path        Path of the output directory.
    """

    def __init__(self, path: Path, text: str = "", scratch: Optional[_Scratch] = None) -> None:
        self.path = Path(path)
        self.text = text
        self._scratch = scratch  # keeps a temporary directory alive while this result is

    @functools.cached_property
    def requests(self) -> pd.DataFrame:
        parquet = self.path / "requests.parquet"
        return _read_requests(parquet if parquet.exists() else self.path / "requests.csv")

    @functools.cached_property
    def timeseries(self) -> pd.DataFrame:
        return _read_csv(self.path / "timeseries.csv")

    @functools.cached_property
    def replicas(self) -> pd.DataFrame:
        return _read_csv(self.path / "replicas.csv")

    @functools.cached_property
    def summary(self) -> dict:
        with open(self.path / "summary.json", encoding="utf-8") as f:
            return json.load(f)

    @functools.cached_property
    def config(self) -> str:
        return (self.path / "resolved.toml").read_text(encoding="utf-8")

    def to_dir(self, path: PathLike) -> Path:
        """Copies the output files to `path` (a new directory; an existing one raises FileExistsError)."""
        return Path(shutil.copytree(self.path, os.fspath(path)))

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<servesim.Result {s.get('name', '')}: {s.get('requests_finished')} of {s.get('requests')} "
            f"requests finished, at {self.path}>"
        )


class Comparison:
    """A comparison's outputs (the files of `servesim compare`), read on first access.

    Attributes:
      table       DataFrame, `comparison.csv`: one row per variant (the first is the baseline) with the
                  summary metrics, their delta and ratio against the baseline (with several seeds, means
                  and 95% confidence half-widths).
      seeds_table DataFrame, `comparison_seeds.csv` (every seed x variant row), or None with one seed.
      paired      DataFrame, `paired_requests.csv`: each request present in every variant, side by side.
      runs        dict from each variant's directory name (`prefix_caching=false`; with several seeds
                  `seed-<s>/prefix_caching=false`) to its `Result`.
      text        str, the terminal table the CLI prints.
      path        Path of the output directory.
    """

    def __init__(self, path: Path, text: str, scratch: Optional[_Scratch] = None) -> None:
        self.path = Path(path)
        self.text = text
        self._scratch = scratch

    @functools.cached_property
    def table(self) -> pd.DataFrame:
        return _read_csv(self.path / "comparison.csv")

    @functools.cached_property
    def seeds_table(self) -> Optional[pd.DataFrame]:
        p = self.path / "comparison_seeds.csv"
        return _read_csv(p) if p.exists() else None

    @functools.cached_property
    def paired(self) -> pd.DataFrame:
        return _read_csv(self.path / "paired_requests.csv")

    @functools.cached_property
    def runs(self) -> dict:
        # In the table's order (the baseline first), seed by seed.
        order = {v: i for i, v in enumerate(self.table["variant"])}

        def key(p: Path):
            rel = p.relative_to(self.path)
            seed = int(rel.parts[0][len("seed-"):]) if len(rel.parts) > 1 else 0
            return (seed, order.get(rel.name, len(order)), rel.as_posix())

        found = sorted((p.parent for p in self.path.rglob("summary.json")), key=key)
        return {p.relative_to(self.path).as_posix(): Result(p, scratch=self._scratch) for p in found}

    def to_dir(self, path: PathLike) -> Path:
        """Copies the comparison's files to `path` (a new directory)."""
        return Path(shutil.copytree(self.path, os.fspath(path)))

    def __repr__(self) -> str:
        return f"<servesim.Comparison of {len(self.runs)} runs at {self.path}>"


def run(
    config: Optional[PathLike] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    seed: Optional[int] = None,
    out: Optional[PathLike] = None,
    no_leap: bool = False,
    format: str = "csv",
) -> Result:
    """Runs one simulation, as `servesim run --config CONFIG --set K=V ... --seed SEED --out OUT`.

    config: a TOML file, or None for the embedded default chat workload. overrides: dotted keys to values
    (bool, int, float, str, path, list, dict), e.g. {"cluster.replicas": 4, "engine.prefix_caching":
    False}. seed: the master seed. out: the output directory (default: a temporary one). no_leap: step
    one engine step at a time (same outputs, slower; for checking). format: "csv" or "parquet", the
    per-request file (`--format`; reading Parquet needs pyarrow: pip install "servesim[parquet]").
    Raises ConfigError for bad input, ServesimError when outputs cannot be written.
    """
    if format not in ("csv", "parquet"):
        raise ConfigError(f"format: {format!r} is neither \"csv\" nor \"parquet\"")
    if format == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ConfigError(
                'format="parquet": reading requests.parquet needs pyarrow; pip install "servesim[parquet]"'
            ) from None
    _check_seed(seed)
    sets = _sets(overrides)
    scratch = None if out is not None else _Scratch()
    target = _out(out) if out is not None else scratch.path / "run"
    found, text = _run(os.fspath(target), _path(config), sets, _seed(seed), no_leap, format == "parquet")
    _warn(found)
    return Result(target, text, scratch)


def compare(
    vary: Mapping[str, Iterable[Any]],
    config: Optional[PathLike] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    seed: Optional[int] = None,
    seeds: int = 1,
    jobs: int = 0,
    out: Optional[PathLike] = None,
    png: bool = False,
) -> Comparison:
    """Compares variants on the identical workload, as `servesim compare --vary K=V1,V2 ...`.

    vary: each key to the values it takes, e.g. {"engine.prefix_caching": [True, False]}; several keys
    make a grid, the first combination is the baseline. seeds: repeat over this many seeds (seed,
    seed+1, ...) for 95% confidence intervals. jobs: runs at once (0: one per core; results do not
    depend on it). config, overrides, seed, out: as for `run`. png: plots as PNG instead of SVG.
    """
    if not isinstance(vary, Mapping):
        raise TypeError("vary: give a dict of dotted keys to lists of values, e.g. {'engine.prefix_caching': [True, False]}")
    if not vary:
        raise ConfigError("vary: the dict is empty; name at least one key and its values, e.g. {'engine.prefix_caching': [True, False]}")
    varies = []
    for k, values in vary.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise TypeError(f"vary[{k!r}]: give a list of values, e.g. [True, False]")
        texts = [_toml(v, k) for v in values]
        if not texts:
            raise ConfigError(f"vary[{k!r}]: the list of values is empty; give at least one")
        varies.append(f"{k}=" + ",".join(texts))
    _check_seed(seed)
    if not (isinstance(seeds, numbers.Integral) and 1 <= seeds < 2**32):
        raise ConfigError(f"seeds: {seeds!r} is not a whole number of seeds, at least 1")
    if not (isinstance(jobs, numbers.Integral) and 0 <= jobs < 2**32):
        raise ConfigError(f"jobs: {jobs!r} is not a number of runs at once (0: one per core)")
    sets = _sets(overrides)
    scratch = None if out is not None else _Scratch()
    target = _out(out) if out is not None else scratch.path / "compare"
    found, text = _compare(os.fspath(target), varies, _path(config), sets, _seed(seed), int(seeds), int(jobs), png)
    _warn(found)
    return Comparison(target, text, scratch)


def load(path: PathLike) -> Union[Result, Comparison]:
    """Reads a directory the CLI (or `out=`) wrote: a run's as a `Result`, a comparison's as a
    `Comparison`."""
    p = Path(path)
    if (p / "comparison.csv").exists():
        return Comparison(p, "")
    if (p / "summary.json").exists():
        return Result(p)
    raise FileNotFoundError(f"{p}: neither a servesim run (summary.json) nor a comparison (comparison.csv)")
