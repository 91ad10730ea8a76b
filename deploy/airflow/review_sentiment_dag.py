"""Airflow DAG: score each day's reviews on Dataflow through the Apache Beam provider, one run per date."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowConfiguration

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.x
    from airflow import DAG

# Where the repo is checked out on the Airflow workers (launcher, setup.py and configs/ are read from there),
# and which Python runs the launcher: a virtualenv with this project installed (`pip install -c constraints.txt
# '.[gcp]'`), kept apart from Airflow's own environment. Read once at parse time; no DB access.
SENTIMENT_HOME = os.environ.get("SENTIMENT_HOME", "/opt/sentiment")
SENTIMENT_PYTHON = os.environ.get("SENTIMENT_PYTHON", f"{SENTIMENT_HOME}/.venv/bin/python")

with DAG(
    dag_id="review_sentiment_daily",
    description="Nightly review-sentiment batch scoring (Beam + Keras on Dataflow)",
    # One run per day; the run for logical date D starts after D has ended and scores D ({{ ds }}).
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    # Every day since start_date gets its own run; missed days and `airflow dags backfill` (Airflow 2) /
    # `airflow backfill create` (Airflow 3) fill in history one date at a time.
    catchup=True,
    # Never two days at once: runs share the model bundle and Dataflow quota, and a backfill should go in order.
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=8),
    default_args={
        "owner": "data-science",
        "retries": 2,
        "retry_delay": timedelta(minutes=15),
        # On timeout Airflow kills the task and the operator's on_kill cancels the Dataflow job.
        "execution_timeout": timedelta(hours=6),
    },
    tags=["sentiment", "beam", "dataflow"],
) as dag:
    score = BeamRunPythonPipelineOperator(
        task_id="score_reviews",
        # Runs `SENTIMENT_PYTHON launch_score.py --runner=DataflowRunner --job_name=... --project=... --region=...
        # --labels=... --key=value ...`; launch_score maps that onto `sentiment-score score ...` (exit 0 = done).
        py_file=f"{SENTIMENT_HOME}/deploy/airflow/launch_score.py",
        py_interpreter=SENTIMENT_PYTHON,
        py_options=[],
        # None: use py_interpreter's environment as is; a list would build a throwaway virtualenv on every run.
        py_requirements=None,
        py_system_site_packages=False,
        runner="DataflowRunner",
        # Beam options on top of the config's `beam:` section (these win). Templated, so Airflow Variables are
        # read when the task runs, not at parse time; an unset Variable renders "" and the launcher drops it,
        # leaving the config's value. project and region are added by the operator from dataflow_config (the
        # project falls back to the GCP connection's), also overriding the config.
        default_pipeline_options={
            "temp_location": "{{ var.value.get('sentiment_dataflow_temp_location', '') }}",
            "staging_location": "{{ var.value.get('sentiment_dataflow_staging_location', '') }}",
            # What the Dataflow workers install: the project with its dependencies.
            "setup_file": f"{SENTIMENT_HOME}/setup.py",
        },
        # The job's own options; relative paths are relative to SENTIMENT_HOME (the launcher runs from there).
        # Input/model/output paths come from the config; add "output": ... etc. here to override them.
        pipeline_options={
            "config": "configs/dataflow.yaml",
            "date": "{{ ds }}",
        },
        dataflow_config=DataflowConfiguration(
            # Templated; a unique suffix is appended, so a retry never collides with the failed attempt's job.
            job_name="review-sentiment-{{ ds_nodash }}",
            append_job_name=True,
            # The operator always passes --region (and --project) from here, overriding the config's values.
            location="{{ var.value.get('sentiment_dataflow_region', 'europe-west1') }}",
            gcp_conn_id="google_cloud_default",
            # Batch job: wait for a terminal state, so the task's success means the partition is written.
            wait_until_finished=True,
            # Task killed (timeout, mark failed) -> cancel the job, and give the cancel this long to take.
            cancel_timeout=10 * 60,
        ),
    )
