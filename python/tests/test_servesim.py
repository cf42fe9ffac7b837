"""The Python package against the CLI: same rows for the same seed, the documented dtypes, errors that
name what is wrong. The CLI binary comes from SERVESIM_BIN (python/run_tests.sh sets it to the build that
`cargo test` made) or the repository's target/{release,debug}/servesim."""

import csv
import importlib.util
import math
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import servesim

ROOT = Path(__file__).resolve().parents[2]
# A small run: 300 requests of the default chat workload on 2 replicas (a few hundred milliseconds).
SMALL = {"workload.max_requests": 300, "cluster.replicas": 2, "workload.session_rate": 2.0}


def cli() -> str:
    env = os.environ.get("SERVESIM_BIN")
    if env:
        return env
    for p in (ROOT / "target/release/servesim", ROOT / "target/debug/servesim"):
        if p.exists():
            return str(p)
    pytest.fail("no servesim binary: build one (cargo build) or set SERVESIM_BIN")


def cli_run(out: Path, sets, seed: int) -> Path:
    args = [cli(), "run", "-q", "--out", str(out), "--seed", str(seed)]
    for s in sets:
        args += ["--set", s]
    subprocess.run(args, check=True)
    return out


@pytest.fixture(scope="module")
def small():
    return servesim.run(overrides=SMALL, seed=7)


def test_requests_equal_the_cli_rows_for_the_same_seed(small, tmp_path):
    d = cli_run(tmp_path / "cli", ["workload.max_requests=300", "cluster.replicas=2", "workload.session_rate=2.0"], 7)
    # The files themselves, byte for byte.
    for f in ("requests.csv", "timeseries.csv", "summary.json", "resolved.toml"):
        assert (small.path / f).read_bytes() == (d / f).read_bytes(), f
    # And the DataFrame, cell by cell, against the CLI's CSV read as text: integers equal, floats equal
    # to the decimal they were written as, empty cells missing.
    with open(d / "requests.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    df = small.requests
    assert len(df) == len(rows) == 300
    assert list(df.columns) == list(rows[0].keys())
    for i, row in enumerate(rows):
        for col, text in row.items():
            v = df.at[i, col]
            if text == "":
                assert pd.isna(v), (i, col, v)
            elif df[col].dtype == "float64":
                assert v == float(text), (i, col, v, text)
            elif str(df[col].dtype) in ("int64", "Int64", "uint64", "UInt64"):
                assert v == int(text), (i, col, v, text)
            else:
                assert v == text, (i, col, v, text)


def test_dtypes(small):
    dt = small.requests.dtypes.astype(str).to_dict()
    assert dt["request_id"] == dt["session_id"] == "uint64"
    for c in ("turn", "prompt_tokens", "output_tokens", "preemptions", "priority"):
        assert dt[c] == "int64", c
    assert dt["replica"] == "Int64" and dt["batch_id"] == "UInt64"
    for c in ("status", "finish_reason", "failure_reason"):
        assert dt[c] == "string", c
    for c in ("arrival_s", "ttft_s", "tpot_s", "e2e_s", "queue_s"):
        assert dt[c] == "float64", c
    assert small.requests["batch_id"].isna().all()  # no dynamic batcher here
    ts = small.timeseries
    assert ts["replica_state"].dtype == "string" and ts["time_s"].dtype == "float64"
    assert ts["num_requests_running"].dtype == "int64"
    assert small.replicas["model"].dtype == "string"


def test_summary_and_tables_agree(small):
    s = small.summary
    r = small.requests
    assert s["requests"] == len(r) == 300
    assert s["requests_finished"] == int((r["status"] == "finished").sum())
    assert math.isclose(s["ttft_mean_s"], r.loc[r["status"] == "finished", "ttft_s"].mean(), rel_tol=1e-6)
    assert sorted(small.replicas["replica"]) == [0, 1]
    assert "max_requests = 300" in small.config
    assert "TTFT" in small.text


def test_same_seed_same_rows_other_seed_other_rows(small):
    again = servesim.run(overrides=SMALL, seed=7)
    pd.testing.assert_frame_equal(again.requests, small.requests)
    other = servesim.run(overrides=SMALL, seed=8)
    assert not other.requests["arrival_s"].equals(small.requests["arrival_s"])


def test_to_dir_and_load(small, tmp_path):
    p = small.to_dir(tmp_path / "copy")
    assert (p / "requests.csv").read_bytes() == (small.path / "requests.csv").read_bytes()
    back = servesim.load(p)
    pd.testing.assert_frame_equal(back.requests, small.requests)
    with pytest.raises(FileExistsError):
        small.to_dir(tmp_path / "copy")


def test_out_writes_there(tmp_path):
    r = servesim.run(overrides={"workload.max_requests": 20}, seed=1, out=tmp_path / "mine")
    assert r.path == tmp_path / "mine" and len(r.requests) == 20


def test_a_bad_key_raises_naming_it():
    with pytest.raises(servesim.ConfigError, match="engine.no_such_knob"):
        servesim.run(overrides={"engine.no_such_knob": 1})
    with pytest.raises(ValueError, match="engine.max_num_seqs"):
        servesim.run(overrides={"engine.max_num_seqs": "many"})
    with pytest.raises(servesim.ConfigError, match="no_such_file.toml"):
        servesim.run(config="no_such_file.toml")
    with pytest.raises(TypeError, match="workload.max_requests"):
        servesim.run(overrides={"workload.max_requests": object()})
    with pytest.raises(servesim.ConfigError, match="seed"):
        servesim.run(seed=-1)
    with pytest.raises(servesim.ConfigError, match="empty"):
        servesim.compare({})
    with pytest.raises(servesim.ConfigError, match="engine.prefix_caching"):
        servesim.compare({"engine.prefix_caching": []})
    with pytest.raises(servesim.ConfigError, match="seeds"):
        servesim.compare({"engine.prefix_caching": [True]}, seeds=0)
    # The message is the CLI's line, without its newline.
    with pytest.raises(servesim.ConfigError) as e:
        servesim.run(overrides={"cluster.replicas": "two"})
    assert not str(e.value).endswith("\n")


def test_a_bad_config_file_names_its_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[engine]\nmax_num_seqs = -3\n')
    with pytest.raises(servesim.ConfigError) as e:
        servesim.run(config=bad)
    assert "bad.toml" in str(e.value) and "max_num_seqs" in str(e.value)


def test_compare_cache_on_off():
    c = servesim.compare({"engine.prefix_caching": [True, False]}, overrides=SMALL, seed=3)
    assert list(c.table["variant"]) == ["prefix_caching=true", "prefix_caching=false"]
    # In the table's order, the baseline first (not the directories' alphabetical order).
    assert list(c.runs) == ["prefix_caching=true", "prefix_caching=false"]
    assert c.table["variant"].dtype == "string"
    off = c.runs["prefix_caching=false"]
    on = c.runs["prefix_caching=true"]
    assert (off.requests["cached_tokens"] == 0).all()
    assert on.requests["cached_tokens"].sum() > 0
    # The identical workload under both: the same sessions' first turns arrive at the same instants, and
    # every turn has the same prompt and output lengths (later turns follow their predecessor's finish
    # plus a think time, so their instants differ).
    key = ["session_id", "turn"]
    a = on.requests.sort_values(key).reset_index(drop=True)
    b = off.requests.sort_values(key).reset_index(drop=True)
    cols = key + ["prompt_tokens", "output_tokens"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    first = a["turn"] == 1
    assert (a.loc[first, "arrival_s"] == b.loc[first, "arrival_s"]).all()
    assert not (a["arrival_s"] == b["arrival_s"]).all()
    assert len(c.paired) == 300
    assert "prefix_caching" in c.text


def test_override_values_become_toml():
    t = servesim._toml
    assert t(True, "k") == "true" and t(3, "k") == "3" and t(0.5, "k") == "0.5"
    assert t("round_robin", "k") == '"round_robin"' and t('a"b', "k") == '"a\\"b"'
    assert t([1, 2.5], "k") == "[1, 2.5]" and t(float("inf"), "k") == "inf"
    assert t({"a": 1}, "k") == '{ "a" = 1 }'
    np = pytest.importorskip("numpy")
    assert t(np.int64(4), "k") == "4" and t(np.float32(0.5), "k") == "0.5" and t(np.bool_(True), "k") == "true"
    assert t(np.array([1, 2]), "k") == "[1, 2]"


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Parquet's rows (a) against the CSV's (b): the same dtypes and, column by column, the same values:
    exact for integers and strings, times within the CSV's rounding to microseconds."""
    assert a.dtypes.to_dict() == b.dtypes.to_dict()
    for c in a.columns:
        if a[c].dtype == "float64":
            assert (a[c].isna() == b[c].isna()).all(), c
            diff = (a[c] - b[c]).abs().dropna()
            assert diff.empty or diff.max() <= 0.5e-6 + 1e-9, c
        else:
            pd.testing.assert_series_equal(a[c], b[c], check_names=True)


def test_parquet_holds_the_csv_rows(small):
    pytest.importorskip("pyarrow")
    p = servesim.run(overrides=SMALL, seed=7, format="parquet")
    assert (p.path / "requests.parquet").exists() and not (p.path / "requests.csv").exists()
    assert_same_rows(p.requests, small.requests)
    # The rest of the run is the same bytes.
    for f in ("timeseries.csv", "summary.json"):
        assert (p.path / f).read_bytes() == (small.path / f).read_bytes(), f
    with pytest.raises(servesim.ConfigError, match="format"):
        servesim.run(overrides=SMALL, format="xlsx")


def test_whole_range_ids_and_mixed_null_batch_ids(tmp_path):
    """A replayed trace whose session ids use the whole u64 range keeps them exact (uint64), in CSV and
    Parquet; the dynamic batcher's batch ids, null for rejected requests, come through as UInt64."""
    pytest.importorskip("pyarrow")
    trace = tmp_path / "trace.csv"
    subprocess.run(
        [cli(), "workload", "export", "--set", "workload.max_requests=40", "--out", str(trace)], check=True
    )
    rows = list(csv.DictReader(open(trace, newline="")))
    big = {r["session_id"]: str(2**64 - 1 - int(r["session_id"])) for r in rows}
    for r in rows:
        r["session_id"] = big[r["session_id"]]
    with open(trace, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    over = {
        "workload.kind": "trace", "workload.trace.format": "servesim", "workload.trace.path": str(trace),
        "engine.kind": "dynamic", "engine.max_model_len": 1024,
    }
    a = servesim.run(overrides=over, seed=1, format="parquet").requests
    b = servesim.run(overrides=over, seed=1).requests
    assert_same_rows(a, b)
    assert set(b["session_id"]) <= {int(v) for v in big.values()} and b["session_id"].max() == 2**64 - 1
    assert b["batch_id"].notna().any() and b["batch_id"].isna().any()


def test_disaggregated_timeline_columns():
    """A disaggregated run's rows name the prefill instance (nullable Int64) and split each finished
    request's E2E into five parts, in CSV and Parquet alike."""
    over = dict(SMALL, **{
        "cluster.mode": "disaggregated", "cluster.prefill.replicas": 1, "cluster.decode.replicas": 1,
    })
    r = servesim.run(overrides=over, seed=3)
    df = r.requests
    assert str(df["prefill_replica"].dtype) == "Int64"
    done = df[df["status"] == "finished"]
    assert len(done) > 100 and (done["prefill_replica"] == 0).all() and (done["replica"] == 1).all()
    parts = ["prefill_queue_s", "prefill_s", "kv_transfer_s", "decode_queue_s", "decode_s"]
    # Each part and E2E are written to the microsecond: six roundings of half a microsecond at most.
    assert ((done[parts].sum(axis=1) - done["e2e_s"]).abs() <= 4e-6).all()
    assert r.summary["pd_kv_transfers"] == len(done) and r.summary["pd_kv_transfer_bytes"] > 0
    # Aggregated runs leave them empty.
    assert small_columns_empty(servesim.run(overrides=SMALL, seed=3).requests, ["prefill_replica"] + parts)
    if importlib.util.find_spec("pyarrow"):
        assert_same_rows(servesim.run(overrides=over, seed=3, format="parquet").requests, df)


def small_columns_empty(df, cols):
    return all(df[c].isna().all() for c in cols)
