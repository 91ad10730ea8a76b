"""`sentiment-score verify`: checks published partitions, reading storage with the config's Beam filesystem options."""

from __future__ import annotations

import sys

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import ExitCode, OutputError
from pipeline.publish.factory import publisher_for
from pipeline.run.config import ScoreConfig
from pipeline.run.options import pipeline_options


def _refuse(message: str) -> int:
    print(f"sentiment-score: error: {message}", file=sys.stderr)
    return ExitCode.USAGE


def run_verify(config: ScoreConfig, dates: list[str] | None, beam_flags: list[str]) -> int:
    """Checks the partitions (the given days, or every one the output holds): one line each; 0 when all are
    complete, 1 naming what is not, 2 when the output does not exist or holds the other format."""
    # Credentials, endpoints, project: the config's beam section then the command line, as the run reads storage.
    FileSystems.set_options(pipeline_options(config, beam_flags))
    output, fmt = config.output, config.output_format
    publisher = publisher_for(output, fmt, config.catalog, config.iceberg_tables)
    try:
        found = publisher.partitions_found()
    except OutputError as e:  # a catalog that cannot be read: named, one line
        print(f"sentiment-score: error: {e}", file=sys.stderr)
        return ExitCode.FAILED
    if found is None:
        other = publisher.state().other_format  # read only, as partitions_found
        if other is not None:
            return _refuse(
                f"output {output} holds {other} output, not {fmt}: verify it with --output-format {other} "
                "(or the config's output_format)"
            )
        if dates is None:
            return _refuse(f"no such output: {output} holds no published {fmt} partition")
        print(f"verify: no such output yet: {output}")
    if dates is None:
        partitions = found or [""]
        if found:
            print(f"verify: {len(found)} partition(s) found in {output}: {found[0]} .. {found[-1]}")
    else:
        partitions = dates
    incomplete = []
    for partition in partitions:
        check = publisher.check(partition)
        print(("OK " if check.complete else "INCOMPLETE ") + check.message)
        if not check.complete:
            incomplete.append(publisher.name(partition))
    if incomplete:
        print(f"verify: {len(incomplete)} of {len(partitions)} partition(s) incomplete: {', '.join(incomplete)}")
        return ExitCode.FAILED
    print(f"verify: all {len(partitions)} partition(s) complete")
    return ExitCode.OK
