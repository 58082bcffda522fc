"""Every bad input of every job is one ``error: ...`` line, fast, before Ray starts (issue 25's probes)."""

from __future__ import annotations

import pytest

from dctdiff.commands import (
    demo_command,
    docs_images,
    evaluate_command,
    prepare_command,
    sample_command,
    sweep_command,
    train_command,
    upsample_command,
)  # fmt: skip
from dctdiff.commands import main as dctdiff_main


def one_error_line(capsys) -> str:
    """The single ``error: ...`` line a failed job wrote to stderr (no usage, no traceback)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def exit_status(job, argv: list[str]) -> int:
    """The status ``job.main(argv)`` returns or exits with (argparse exits)."""
    try:
        return job.main(argv)
    except SystemExit as stopped:
        return stopped.code


# --- 1. argument errors: one line, exit 2, usage only with --help -----------------------------------------

SAMPLE = ["--checkpoint", "runs/x", "--output", "out"]


@pytest.mark.parametrize(
    "job,argv,expected",
    [
        (train_command, ["--max-steps", "-5"], "argument --max-steps: must be >= 1, got -5"),
        (train_command, ["--workers", "0"], "argument --workers: must be >= 1, got 0"),
        (train_command, ["--workers", "-1"], "argument --workers: must be >= 1, got -1"),
        (train_command, ["--dry-run", "--show-batches", "2"], "--show-batches needs --dry-run and --data"),
        (sample_command, [*SAMPLE, "--sampler", "bogus"], "argument --sampler: invalid choice: 'bogus'"),
        (sample_command, [*SAMPLE, "--precision", "fp64"], "argument --precision: invalid choice: 'fp64'"),
        (sample_command, ["--output", "out"], "the following arguments are required: --checkpoint"),
        (prepare_command, ["--source", "photos", "--output", "o", "--dtype", "float64"], "invalid choice: 'float64'"),
        (prepare_command, ["--source", "photos", "--output", "o"], "give --preset"),
        (evaluate_command, ["fid", "a", "--precision", "fp64"], "argument --precision: invalid choice: 'fp64'"),
        (evaluate_command, ["bogus"], "invalid choice: 'bogus'"),
        (sweep_command, ["--study", "lr", "--workers", "0"], "argument --workers: must be >= 1, got 0"),
        (upsample_command, ["in", "out", "--factor", "3"], "argument --factor: invalid choice: 3"),
        (demo_command, ["--images", "many"], "argument --images: invalid int value: 'many'"),
        (docs_images, ["--max-kb", "0"], "argument --max-kb: must be >= 1, got 0"),
    ],
)
def test_an_argument_error_is_one_line_and_exit_2(job, argv, expected, capsys, no_ray):
    assert exit_status(job, argv) == 2
    line = one_error_line(capsys)
    assert expected in line and "--help" in line  # where the usage is


def test_help_still_prints_the_usage(capsys):
    assert exit_status(sample_command, ["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: dctdiff sample")


def test_an_unknown_subcommand_is_one_error_line(capsys):
    assert dctdiff_main(["bogus"]) == 2
    assert "unknown subcommand 'bogus'" in one_error_line(capsys)


# --- 5. a missing path: "does not exist", naming the flag and the path --------------------------------------


@pytest.mark.parametrize(
    "job,argv,flag",
    [
        (sample_command, ["--checkpoint", "{missing}", "--output", "{tmp}/out"], "--checkpoint"),
        (sample_command, ["--checkpoint", "{missing}.pth", "--output", "{tmp}/out"], "--checkpoint"),
        (
            train_command,
            ["--data", "{missing}", "--storage", "{tmp}/runs", "--mlflow-uri", "sqlite:///{tmp}/m.db"],
            "--data",
        ),
        (train_command, ["--config", "{missing}.yaml", "--dry-run"], "--config"),
        (sweep_command, ["--study", "{missing}.yaml", "--data", "d", "--dry-run"], "--study"),
        (
            prepare_command,
            ["--source", "folder:{missing}", "--preset", "demo", "--output", "{tmp}/o"],
            "--source folder:PATH",
        ),
        (
            prepare_command,
            ["--source", "cifar10:{missing}", "--preset", "cifar10", "--output", "{tmp}/o"],
            "--source cifar10:PATH",
        ),
        (
            prepare_command,
            ["--source", "parquet:{missing}", "--preset", "demo", "--output", "{tmp}/o"],
            "--source parquet:PATH",
        ),
        (
            prepare_command,
            ["--source", "fashion-mnist:{missing}", "--preset", "demo", "--output", "{tmp}/o"],
            "--source fashion-mnist:PATH",
        ),
        (evaluate_command, ["fid", "photos:8", "{missing}.npz", "--resolution", "32", "--no-mlflow"], "image set"),
        (
            evaluate_command,
            [
                "fid",
                "photos:8",
                "--save-stats",
                "{tmp}/s.npz",
                "--weights",
                "{missing}.pt",
                "--resolution",
                "32",
                "--no-mlflow",
            ],
            "--weights",
        ),
        (upsample_command, ["{missing}", "{tmp}/out"], "input folder"),
        (
            upsample_command,
            ["photos:8", "{tmp}/out", "--compare", "--resolution", "32", "--weights", "{missing}.pt"],
            "--weights",
        ),
    ],
)
def test_a_missing_path_does_not_exist_naming_its_flag(job, argv, flag, tmp_path, capsys, no_ray):
    missing = tmp_path / "nothing-here"
    assert exit_status(job, [a.format(missing=missing, tmp=tmp_path) for a in argv]) == 2
    line = one_error_line(capsys)
    assert f"{flag} {missing}" in line and "does not exist" in line, line


def test_require_exists_is_a_value_error_and_a_file_not_found_error(tmp_path):
    from dctdiff.infra import storage

    assert storage.require_exists(str(tmp_path), "--data") == str(tmp_path)
    for uri in ("", str(tmp_path / "x")):
        with pytest.raises(ValueError, match="--data .* does not exist: run it") as error:
            storage.require_exists(uri, "--data", "run it")
        assert isinstance(error.value, FileNotFoundError)


# --- 2. run names: one folder name, no control character, at most 255 bytes ---------------------------------

BAD_NAMES = ["a\nb", "tab\there", "bell\x07", "nul\x00", "del\x7f", "c1\x85", "x" * 256, "é" * 128]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_run_name_with_a_control_character_or_too_long_is_refused_in_a_dry_run(name, capsys, no_ray):
    assert exit_status(train_command, ["--dry-run", "--name", name]) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: --name ") and ("control character" in line or "at most 255" in line), line
    assert capsys.readouterr().out == ""  # no config printed


@pytest.mark.parametrize("name", BAD_NAMES[:2] + BAD_NAMES[-1:])
def test_a_sweep_name_is_checked_by_the_same_rule(name, tmp_path, capsys, no_ray):
    argv = ["--study", "lr", "--data", "d", "--storage", str(tmp_path), "--name", name, "--dry-run"]
    assert exit_status(sweep_command, argv) == 2
    assert one_error_line(capsys).startswith("error: --name ")


def test_names_up_to_255_bytes_of_printable_text_pass():
    from dctdiff.models.config import check_run_name

    for name in ("x" * 255, "é" * 127, "run 1 (lr=3e-4)", "日本語-run"):
        assert check_run_name(name) == name


# --- 6. the --max-pixels rule in a bomb's reason; the summary rate; "did you mean" --------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none: enough for Pillow's size check."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20_000, 5_000])  # over Pillow's own hard limit; over ours only
def test_a_decompression_bomb_is_rejected_by_the_max_pixels_rule(side):
    from dctdiff.data.image_decoding import DEFAULT_MAX_PIXELS, ImageRejected, decode

    limit = DEFAULT_MAX_PIXELS if side > 10_000 else 1_000_000
    with pytest.raises(ImageRejected) as rejected:
        decode(png_header(side, side), max_pixels=limit)
    assert rejected.value.kind == "decompression bomb"
    assert f"{side * side} pixels exceeds --max-pixels {limit} (raise it with --max-pixels" in rejected.value.detail


def test_max_pixels_above_what_pillow_opens_is_refused(tmp_path, capsys, no_ray):
    from dctdiff.data.image_decoding import PILLOW_MAX_PIXELS

    argv = ["--source", "photos", "--preset", "demo", "--output", str(tmp_path / "o"), "--max-pixels", str(10**10)]
    assert exit_status(prepare_command, argv) == 2
    assert f"--max-pixels must be at most {PILLOW_MAX_PIXELS}" in one_error_line(capsys)


@pytest.mark.parametrize(
    "count,seconds,text", [(9, 30.0, "0.3 images/s"), (2, 7.0, "0.286 images/s"), (24, 0.5, "48 images/s"),
                           (5000, 12.5, "400 images/s"), (0, 3.0, "0 images/s")],
)  # fmt: skip
def test_the_summary_rate_has_the_digits_of_a_small_input(count, seconds, text):
    from dctdiff.infra.logs import rate

    assert rate(count, seconds) == text


@pytest.mark.parametrize(
    "override,suggestion",
    [
        ("optim.ema_decya=0.9", "did you mean 'optim.ema_decay'?"),
        ("optimm.lr=1e-4", "did you mean 'optim'?"),
        ("cadence.sampler=dpm2m", "did you mean 'dpm++2m'?"),
        ("optim.precision=bf61", "did you mean 'bf16'?"),
        ("model.size=SS", "did you mean 'S'?"),
    ],
)
def test_a_near_miss_key_or_value_gets_a_did_you_mean(override, suggestion, capsys, no_ray):
    assert exit_status(train_command, ["--dry-run", "--set", override]) == 2
    assert suggestion in one_error_line(capsys)


def test_a_near_miss_choice_of_a_flag_gets_a_did_you_mean_and_a_far_one_none(capsys, no_ray):
    assert exit_status(sample_command, [*SAMPLE, "--sampler", "dpm2m"]) == 2
    assert "did you mean 'dpm++2m'?" in one_error_line(capsys)
    assert exit_status(train_command, ["--dry-run", "--set", "cadence.sampler=zzz"]) == 2
    assert "did you mean" not in one_error_line(capsys)


# --- 3. every tracking URI checked before Ray, in bounded time, in one redacted line ------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://u:secret@127.0.0.1:{port}/db",
        "postgresql://u:p@ssecret@127.0.0.1:{port}/db",  # a password holding '@'
        "postgresql+psycopg2://u:secret@127.0.0.1:{port}/db",
        "mysql+pymysql://u:secret@127.0.0.1:{port}/db",
        "mssql+pyodbc://u:secret@127.0.0.1:{port}/db",
        "http://u:secret@127.0.0.1:{port}",
    ],
)
def test_an_unreachable_tracking_store_is_one_redacted_line_before_ray(uri, tmp_path, capsys, no_ray):
    import time

    uri = uri.format(port=closed_port())
    argv = ["--data", str(tmp_path / "unused"), "--storage", str(tmp_path / "runs"), "--mlflow-uri", uri]
    started = time.monotonic()
    assert exit_status(train_command, argv) == 2
    assert time.monotonic() - started < 10
    line = one_error_line(capsys)
    assert "did not answer" in line and "127.0.0.1" in line and "secret" not in line and "--mlflow-uri" in line


def test_the_default_database_ports_are_the_servers(monkeypatch):
    from dctdiff.infra import mlflow_tracking

    tried = []
    monkeypatch.setattr(
        mlflow_tracking.socket, "create_connection", lambda address, timeout: tried.append(address) or _Closed()
    )
    for uri in ("postgresql://u:pw@db/x", "mysql://u:pw@db/x", "mssql+pyodbc://u:pw@db/x", "postgresql://db:6543/x"):
        mlflow_tracking.check_tracking_uri(uri)
    assert tried == [("db", 5432), ("db", 3306), ("db", 1433), ("db", 6543)]


class _Closed:
    def close(self) -> None:
        pass


def test_a_probe_that_hangs_is_cut_at_its_bound(monkeypatch):
    """A name lookup or a loaded machine could hold the probe past its socket timeout (70 s were seen)."""
    import time

    from dctdiff.infra import mlflow_tracking

    monkeypatch.setattr(mlflow_tracking.urllib.request, "urlopen", lambda *args, **kwargs: time.sleep(30))
    monkeypatch.setattr(mlflow_tracking.socket, "create_connection", lambda *args, **kwargs: time.sleep(30))
    for uri in ("http://u:secret@127.0.0.1:5000", "postgresql://u:secret@127.0.0.1/db"):
        started = time.monotonic()
        with pytest.raises(mlflow_tracking.TrackingError, match="did not answer within 0.5 s") as caught:
            mlflow_tracking.check_tracking_uri(uri, timeout_s=0.5)
        assert time.monotonic() - started < 3 and "secret" not in str(caught.value)


def test_a_sqlite_store_needs_a_folder_it_can_create(tmp_path, capsys, no_ray):
    from dctdiff.infra.mlflow_tracking import check_tracking_uri

    check_tracking_uri(f"sqlite:///{tmp_path}/new/folder/mlflow.db")
    assert (tmp_path / "new" / "folder").is_dir()
    (tmp_path / "file").write_text("x")
    argv = ["fid", "a.npz", "b.npz", "--mlflow-uri", f"sqlite:///{tmp_path}/file/mlflow.db"]
    assert exit_status(evaluate_command, argv) == 2
    line = one_error_line(capsys)
    assert "SQLite tracking store" in line and f"cannot create its folder {tmp_path / 'file'}" in line


def test_a_database_server_that_listens_passes():
    import socket

    from dctdiff.infra.mlflow_tracking import check_tracking_uri

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_tracking_uri(f"postgresql://u:secret@127.0.0.1:{server.getsockname()[1]}/db", timeout_s=2.0)


# --- 4. Ray that does not start, or an --address that does not answer: one line naming it -----------------


@pytest.fixture
def no_ray_yet(monkeypatch):
    """As if no Ray ran in this process (another test's may), and ``ray.init`` fails the test."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)


def test_an_address_that_does_not_answer_is_one_line_without_ray(tmp_path, capsys, no_ray_yet):
    import time

    address = f"127.0.0.1:{closed_port()}"
    argv = ["--source", "photos", "--preset", "demo", "--limit", "4", "--output", str(tmp_path / "o"), "--no-progress"]
    started = time.monotonic()
    assert exit_status(prepare_command, [*argv, "--address", address]) == 2
    assert time.monotonic() - started < 10
    line = one_error_line(capsys)
    assert f"the Ray cluster at {address} does not answer" in line and "omit --address for a local Ray" in line


def test_train_with_an_address_that_does_not_answer_is_one_line(tmp_path, capsys, no_ray_yet):
    import time

    from dctdiff.data.bundled_photos import photo_crops
    from tests.prepared import write_prepared

    data = write_prepared(tmp_path / "data", photo_crops(64, 32, seed=0))
    address = f"ray://127.0.0.1:{closed_port()}"
    argv = ["--data", str(data), "--storage", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"]
    started = time.monotonic()
    assert exit_status(train_command, [*argv, "--address", address]) == 2
    assert time.monotonic() - started < 30  # MLflow's first SQLite store takes seconds; Ray's retries took minutes
    assert f"the Ray cluster at {address} does not answer" in one_error_line(capsys)


def test_the_ray_address_check_reads_the_default_ports(monkeypatch):
    from dctdiff.infra import ray_cluster

    tried = []
    monkeypatch.setattr(
        ray_cluster.socket, "create_connection", lambda address, timeout: tried.append(address) or _Closed()
    )
    for address in ("head:6380", "head", "ray://head", "ray://head:10002", "[::1]:6379", "auto", "local"):
        ray_cluster.check_ray_address(address)
    assert tried == [("head", 6380), ("head", 6379), ("head", 10001), ("head", 10002), ("::1", 6379)]


TIMED_OUT = "The current node timed out during startup. This could happen because some of the raylet failed to startup."


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_a_ray_that_times_out_at_start_is_one_line_with_the_traceback_at_debug_only(
    level, tmp_path, capsys, monkeypatch
):
    import ray

    def time_out(*args, **kwargs):
        raise Exception(TIMED_OUT)  # what ray._private.node raises

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", time_out)
    argv = ["--source", "photos", "--preset", "demo", "--limit", "4", "--output", str(tmp_path / "o"), "--no-progress"]
    assert exit_status(prepare_command, [*argv, "--log-level", level]) == 2
    err = capsys.readouterr().err
    line = f"error: could not start or reach a local Ray: {TIMED_OUT}; check `ray status`"
    assert line in err
    if level == "INFO":
        assert err.strip().count("\n") == 0
    else:
        assert "Traceback" in err and "time_out" in err
