"""Airflow DAG review_sentiment_daily: after day D has ended and its input has landed, score dt=D, then verify it."""

from __future__ import annotations

import os
import shlex
from datetime import timedelta

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
try:  # Airflow 3.1+
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # Airflow 2 and 3.0
    from airflow.timetables.interval import CronDataIntervalTimetable
try:  # Airflow 3, and Airflow 2 with apache-airflow-providers-standard
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.providers.standard.sensors.bash import BashSensor
except ImportError:  # Airflow 2.6+ (retry_exit_code, a list for skip_on_exit_code)
    from airflow.operators.bash import BashOperator
    from airflow.sensors.bash import BashSensor
try:  # Airflow 3
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 2
    from airflow.exceptions import AirflowException, AirflowFailException
try:  # apache-airflow-providers-openlineage: the job's lineage events hang under this task's run
    from airflow.providers.openlineage.conf import is_disabled as _openlineage_disabled
    from airflow.providers.openlineage.plugins.macros import lineage_parent_id
except ImportError:  # no OpenLineage provider: the job's events stand alone
    lineage_parent_id = None

# Read from the worker's environment when the file is parsed, so one DAG file runs Dataflow in production and
# DirectRunner in tests. SENTIMENT_HOME is the checkout the commands run in (relative config paths, and relative
# paths inside the config, are relative to it); SENTIMENT_PYTHON is a virtualenv with this project installed
# editable in that checkout, kept apart from Airflow's own environment.
SENTIMENT_HOME = os.environ.get("SENTIMENT_HOME", "/opt/sentiment")
SENTIMENT_PYTHON = os.environ.get("SENTIMENT_PYTHON", f"{SENTIMENT_HOME}/.venv/bin/python")
SENTIMENT_RUNNER = os.environ.get("SENTIMENT_RUNNER", "DataflowRunner")
# An absolute path stays as it is; a relative one is joined to SENTIMENT_HOME.
SENTIMENT_CONFIG = os.path.join(SENTIMENT_HOME, os.environ.get("SENTIMENT_CONFIG", "configs/dataflow.yaml"))

# The day the run scores: the start of its data interval. With the data-interval timetable below, the run that
# becomes due at D+1 00:00 UTC covers [D, D+1) and scores D, on Airflow 2 and 3 alike; so does a manual run
# triggered during D+1 (Airflow infers the last complete interval). Not {{ ds }}: on Airflow 3 a manual run may
# have no logical date at all, and with "@daily" Airflow 3 would use CronTriggerTimetable, whose logical date D+1
# is the day that has just started.
SCORE_DATE = "{{ data_interval_start | ds }}"

# Timeouts add up: every score attempt may run to its timeout, with a delay before each retry; then verify may
# wait its whole timeout for an asynchronous (Dataflow) job to publish, its last check taking up to a check's
# timeout. The run gets that plus slack for scheduling, so Airflow never times out a DAG run while one of its
# tasks still has time left (a timed-out DAG run would stop the task mid-way, without its own timeout handling).
# Also shorter than the partition lease's expiry (the config's lease_expiry_hours, 6 h by default): a scoring
# process this DAG runs never outlives its lease, so no other run can take the partition from under it.
INPUT_TIMEOUT = timedelta(hours=6)
INPUT_POKE_INTERVAL = timedelta(minutes=10)
INPUT_POKE_TIMEOUT = timedelta(minutes=10)
SCORE_TIMEOUT = timedelta(hours=3)
RETRIES = 2
RETRY_DELAY = timedelta(minutes=10)
VERIFY_TIMEOUT = timedelta(hours=6)
VERIFY_POKE_INTERVAL = timedelta(minutes=5)
VERIFY_POKE_TIMEOUT = timedelta(minutes=10)
SCHEDULING_SLACK = timedelta(minutes=30)
DAGRUN_TIMEOUT = (
    INPUT_TIMEOUT
    + INPUT_POKE_TIMEOUT
    + SCORE_TIMEOUT * (RETRIES + 1)
    + RETRY_DELAY * RETRIES
    + VERIFY_TIMEOUT
    + VERIFY_POKE_TIMEOUT
    + SCHEDULING_SLACK
)

# sentiment-score's exit code when another live run holds the partition's lease (nothing was started).
EXIT_LEASE_HELD = 3
# sentiment-score's exit code for bad usage or config: a retry would fail the same way, so there is none.
EXIT_USAGE = 2
# pipeline.cli.input_ready's exit code while the day's input has not landed.
EXIT_WAITING = 1
# sentiment-score verify's exit code when the partition is not (yet) complete.
EXIT_INCOMPLETE = 1

_PYTHON = shlex.quote(SENTIMENT_PYTHON)
_CONFIG = shlex.quote(SENTIMENT_CONFIG)
# With the OpenLineage provider enabled, the job's START/COMPLETE/FAIL events name this task's run as their parent
# (the provider's lineage_parent_id macro renders NAMESPACE/DAG_ID.TASK_ID/RUN_UUID).
LINEAGE_PARENT = (
    ' --lineage-parent "{{ lineage_parent_id(task_instance) }}"'
    if lineage_parent_id is not None and not _openlineage_disabled()
    else ""
)


class ScoreOperator(BashOperator):
    """A BashOperator that fails for good, without its retries, when the job exits 2 (bad usage or config)."""

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowFailException:
            raise
        except AirflowException as e:  # BashOperator's "... returned a non-zero exit code N."
            if str(e).rstrip(".").endswith(f"exit code {EXIT_USAGE}"):
                raise AirflowFailException(f"{e} Bad usage or config: not retried.") from e
            raise


with DAG(
    dag_id="review_sentiment_daily",
    description="Nightly review-sentiment batch scoring (Beam + Keras), verified by the partition's manifest",
    # Midnight UTC, one data interval per day: the run for [D, D+1) becomes due when D has ended.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    # The first run, due at 2026-11-02 00:00 UTC, scores 2026-11-01.
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    # Every day since start_date gets its own run; enabling the DAG late fills in the missed days.
    catchup=True,
    # Never two days at once: runs share the model bundle and the runner's quota, and history goes in order.
    max_active_runs=1,
    dagrun_timeout=DAGRUN_TIMEOUT,
    default_args={"owner": "data-science", "retries": RETRIES, "retry_delay": RETRY_DELAY},
    tags=["sentiment", "beam"],
    user_defined_macros={"lineage_parent_id": lineage_parent_id} if LINEAGE_PARENT else None,
) as dag:
    # The day's input has landed: its dt=D folder holds _SUCCESS or a first Parquet file. Checked with the project's
    # own config loader and filesystems (gs://, s3:// too); exit 1 (not yet) checks again, in reschedule mode so
    # no worker slot is held while waiting, until INPUT_TIMEOUT; exit 2 (config) fails at once.
    wait_for_input = BashSensor(
        task_id="wait_for_input",
        bash_command=(
            f"cd {shlex.quote(SENTIMENT_HOME)} && "
            f"exec {_PYTHON} -m pipeline.cli.input_ready --config {_CONFIG} --date {SCORE_DATE}"
        ),
        retry_exit_code=EXIT_WAITING,
        mode="reschedule",
        poke_interval=INPUT_POKE_INTERVAL.total_seconds(),
        timeout=INPUT_TIMEOUT.total_seconds(),
        execution_timeout=INPUT_POKE_TIMEOUT,
        retries=0,
    )
    # Scoring fails the task when the command fails (exit 1 run failed, 2 usage/config), and a retry repeats it.
    # With --no-wait, Dataflow (or any remote runner) exits once the job is submitted and the job publishes the
    # partition itself; DirectRunner runs to completion here. A retry while an earlier attempt's job (or any
    # other run of this date) still holds the partition's lease exits 3 without starting anything: the task
    # is then skipped, and verify waits for that run's partition instead of a second job being started.
    # Exit 2 (bad usage or config) fails the task without retries: ScoreOperator.
    score = ScoreOperator(
        task_id="score_reviews",
        bash_command=(
            f"exec {_PYTHON} -m pipeline score --config {_CONFIG} --date {SCORE_DATE} "
            f"{shlex.quote('--runner=' + SENTIMENT_RUNNER)} --no-wait{LINEAGE_PARENT}"
        ),
        cwd=SENTIMENT_HOME,
        skip_on_exit_code=[EXIT_LEASE_HELD],
        # On timeout Airflow sends SIGTERM to the command's process group: a DirectRunner job ends with the task
        # (its lease is not released, it lapses at its expiry, so the retry is skipped and verify decides).
        execution_timeout=SCORE_TIMEOUT,
    )
    # Done means published: `verify --config` reads the output, its format and catalog from the same config the
    # job ran with, and checks the day (a Parquet partition's _SUCCESS manifest, or the Iceberg tables' snapshots).
    # A config that does not load is exit 2. Exit 1 (not complete yet) checks again until VERIFY_TIMEOUT; any
    # other failure fails at once.
    verify = BashSensor(
        task_id="verify_partition",
        bash_command=(
            f"cd {shlex.quote(SENTIMENT_HOME)} && "
            f"exec {_PYTHON} -m pipeline verify --config {_CONFIG} --date {SCORE_DATE}"
        ),
        retry_exit_code=EXIT_INCOMPLETE,
        mode="reschedule",
        poke_interval=VERIFY_POKE_INTERVAL.total_seconds(),
        timeout=VERIFY_TIMEOUT.total_seconds(),
        # Each check (a reschedule-mode poke) on its own: a hung listing fails instead of holding the run.
        execution_timeout=VERIFY_POKE_TIMEOUT,
        # A sensor timeout is final; the budget above counts one verify attempt.
        retries=0,
        # Runs after score succeeded, or was skipped because another live run holds the partition.
        trigger_rule="none_failed",
    )
    wait_for_input >> score >> verify
