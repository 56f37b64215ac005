"""The shared services a team moves to, tested against real ones the test starts: an S3-compatible
object store (moto's server mode) as the DVC remote and as MLflow's artifact store, and an MLflow
tracking server with a database backend."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO, SAMPLE, run_hamdam, sh

BIN = Path(sys.executable).parent
BUCKET = "hamdam"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer:\n{log.read_text()[-3000:]}")


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """An S3-compatible server on a free loopback port, with an empty bucket; its endpoint."""
    import boto3

    port = free_port()
    log = tmp_path / "s3.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": endpoint}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    try:
        wait_for(endpoint, server, log)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    finally:
        server.terminate()
        server.wait(timeout=30)


def keys(client, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


@pytest.mark.slow
def test_dvc_push_and_pull_through_an_s3_remote_restore_data_byte_identical(workspace, s3):
    endpoint, client = s3
    sh(["dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/dvc"], workspace)
    sh(["dvc", "remote", "modify", "store", "endpointurl", endpoint], workspace)
    before = {p.relative_to(workspace): p.read_bytes() for p in (workspace / "data").rglob("*") if p.is_file()}
    sh(["dvc", "push"], workspace)
    assert keys(client, "dvc/")  # the objects are in the bucket
    shutil.rmtree(workspace / "data")
    shutil.rmtree(workspace / ".dvc" / "cache")
    sh(["dvc", "pull"], workspace)
    after = {p.relative_to(workspace): p.read_bytes() for p in (workspace / "data").rglob("*") if p.is_file()}
    assert after == before
    assert "up to date" in sh(["dvc", "status", "data.dvc"], workspace)


@pytest.mark.slow
def test_training_logs_to_an_mlflow_server_that_keeps_its_artifacts_in_s3(tmp_path, s3):
    from mlflow.tracking import MlflowClient

    _, client = s3
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", f"s3://{BUCKET}/mlflow"]  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{uri}/health", server, log)
        work = tmp_path / "work"
        work.mkdir()
        trained = run_hamdam(["train", "experiment=smoke", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                              "callbacks.rich_progress_bar=null", f"data.path={SAMPLE}",
                              f"heldout.path={REPO / 'corpus' / 'eval_fa.jsonl'}", f"logger.tracking_uri={uri}",
                              "logger.artifact_location=null"], work)  # fmt: skip
        assert trained.returncode == 0, trained.stderr[-3000:]
        tracking = MlflowClient(tracking_uri=uri)
        (run,) = tracking.search_runs([tracking.get_experiment_by_name("train").experiment_id])
        assert run.info.status == "FINISHED" and run.data.metrics["heldout/ppl"] > 1
        assert run.data.params["model.lora.r"] == "8"
        stored = keys(client, "mlflow/")
        assert any(k.endswith("resolved_config.yaml") for k in stored), stored
        assert any(k.endswith("adapter_model.safetensors") for k in stored), stored
        assert not (work / "mlflow.db").exists() and not (work / "mlartifacts").exists()  # nothing local
    finally:
        server.terminate()
        server.wait(timeout=30)
