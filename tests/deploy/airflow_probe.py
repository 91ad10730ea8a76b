"""Run with Airflow's own interpreter: what real Airflow makes of review_sentiment_daily, printed as JSON."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

DAG_ID = "review_sentiment_daily"
# Airflow logs to stdout as well; the answer is the one line that starts with this.
ANSWER = "PROBE-ANSWER "


def load_dag(dag_file: str):
    """The DAG as Airflow's DagBag loads it; an import error is fatal."""
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.2+: examples follow [core] load_examples
    except ImportError:
        from airflow.models.dagbag import DagBag
    bag = DagBag(dag_folder=dag_file)
    if bag.import_errors or DAG_ID not in bag.dags:
        raise SystemExit(f"{dag_file} did not load: {bag.import_errors or 'no DAG ' + DAG_ID}")
    return bag.dags[DAG_ID]


def scheduler_timetable(dag):
    """The timetable the scheduler uses (Airflow 3 keeps scheduling logic in a core twin of the DAG's timetable)."""
    try:
        from airflow.serialization.encoders import coerce_to_core_timetable
    except ImportError:  # Airflow 2 and early 3.x: the DAG's timetable schedules itself
        return dag.timetable
    return coerce_to_core_timetable(dag.timetable)


def due_after(dag_file: str, day: str) -> dict:
    """The first run the scheduler creates that becomes due once `day` (UTC) has ended, as catchup would."""
    from airflow.timetables.base import TimeRestriction

    dag = load_dag(dag_file)
    timetable = scheduler_timetable(dag)
    day_end = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
    # Walk the schedule as catchup does, from a few days before, until a run is due at or after the day's end.
    restriction = TimeRestriction(earliest=max(dag.start_date, day_end - timedelta(days=3)), latest=None, catchup=True)
    info = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    while info.run_after < day_end:
        info = timetable.next_dagrun_info(last_automated_data_interval=info.data_interval, restriction=restriction)
    return {
        "run_after": info.run_after.isoformat(),
        "logical_date": info.logical_date.isoformat(),
        "data_interval": [info.data_interval.start.isoformat(), info.data_interval.end.isoformat()],
    }


def dag_facts(dag_file: str) -> dict:
    """Schedule, timeouts and commands of the DAG as loaded, for the checks that need no run."""

    def seconds(delta) -> float | None:  # a timedelta, or a sensor's timeout in seconds
        return None if delta is None else float(getattr(delta, "total_seconds", lambda: delta)())

    dag = load_dag(dag_file)
    tasks = {}
    for task in dag.tasks:
        tasks[task.task_id] = {
            "operator": type(task).__name__,
            "bash_command": getattr(task, "bash_command", None),
            "cwd": getattr(task, "cwd", None),
            "retries": task.retries,
            "retry_delay": seconds(task.retry_delay),
            "execution_timeout": seconds(task.execution_timeout),
            "sensor_timeout": seconds(getattr(task, "timeout", None)) if hasattr(task, "poke") else None,
            "trigger_rule": str(getattr(task.trigger_rule, "value", task.trigger_rule)),
            "upstream": sorted(task.upstream_task_ids),
            "skip_on_exit_code": sorted(getattr(task, "skip_on_exit_code", None) or []),
            "mode": getattr(task, "mode", None),
            "retry_exit_code": getattr(task, "retry_exit_code", None),
        }
    return {
        "timetable": type(dag.timetable).__name__,
        "dagrun_timeout": seconds(dag.dagrun_timeout),
        "max_active_runs": dag.max_active_runs,
        "catchup": dag.catchup,
        "tasks": tasks,
    }


def runs() -> list[dict]:
    """Every run of the DAG in the metadata DB with its data interval and each task's state and tries."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    out = []
    with create_session() as session:
        for run in session.query(DagRun).filter(DagRun.dag_id == DAG_ID):
            out.append(
                {
                    "run_id": run.run_id,
                    "state": str(getattr(run.state, "value", run.state)),
                    "logical_date": run.logical_date.isoformat() if run.logical_date else None,
                    "data_interval": [run.data_interval_start.isoformat(), run.data_interval_end.isoformat()],
                    "tasks": {
                        ti.task_id: {"state": str(getattr(ti.state, "value", ti.state)), "try_number": ti.try_number}
                        for ti in run.get_task_instances(session=session)
                    },
                }
            )
    return out


def main(argv: list[str]) -> None:
    command, *args = argv
    result = {"due-after": due_after, "dag-facts": dag_facts, "runs": runs}[command](*args)
    print(ANSWER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
